"""The ASR round trip (`actors.asr`): error rates on known pairs, and the Ray Data stage's plumbing with a real
transformers pipeline over a random-weight CTC recogniser in the real layout (no recogniser's weights can be
downloaded here, so what it hears is random letters: the test checks the columns, rates and flags it produces, not
a transcript)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from actors.asr import FLAG, AsrStage, Recogniser, error_rate, language, plain, write_tiny_recogniser
from actors.settings import AsrSettings
from benchmarks.quality_faults import clean


@pytest.mark.parametrize(
    ("reference", "heard", "rate"),
    [
        ("Hello, world!", "hello world", 0.0),
        ("the cat sat on the mat", "the cat sat on mat", 1 / 6),  # a deletion
        ("the cat sat", "the dog sat down", 2 / 3),  # a substitution and an insertion
        ("[uv_break] good morning [laugh]", "Good morning.", 0.0),  # control tags are not said
        ("今天天气很好", "今天天汽很好", 1 / 6),  # characters for Chinese, spaces ignored
        ("今天 天气 很好。", "今天天气很好", 0.0),
        ("我们用 GPU 训练", "我们用gpu训练", 0.0),  # mixed: characters
    ],
)
def test_error_rate_on_known_pairs(reference: str, heard: str, rate: float) -> None:
    assert error_rate(reference, heard) == pytest.approx(rate)


def test_error_rate_edges() -> None:
    assert error_rate("[laugh] [uv_break]", "anything") is None  # nothing to say: no rate
    assert error_rate("three words here", "") == 1.0
    assert plain("Don't STOP — now!") == "don't stop now"
    assert (language("你好 world"), language("hello"), language("[laugh] 42")) == ("zh", "en", None)


@pytest.fixture(scope="module")
def recogniser_folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = write_tiny_recogniser(str(tmp_path_factory.mktemp("asr")), seed=0)
    assert (Path(folder) / "model.safetensors").exists() and not list(Path(folder).glob("*.bin"))
    return folder


def _stage_table(rows: int, seed: int = 0) -> pa.Table:
    """What the engine stage hands on: pcm (int16 lists), spoken_text, error, qc_flags and other columns."""
    rng = np.random.default_rng(seed)
    made = [clean(rng) for _ in range(rows)]
    pcm = [np.round(np.clip(m[0], -1, 1) * 32767).astype(np.int16) for m in made]
    texts = [m[2] for m in made]
    pcm[1], texts[2] = np.zeros(0, np.int16), "[laugh]"  # a row without audio, a row with nothing to say
    errors = [None] * rows
    errors[3] = "row 3: the speaker is unknown"
    return pa.table({
        "id": [f"r{i}" for i in range(rows)],
        "pcm": pa.array([p.tolist() for p in pcm], pa.list_(pa.int16())),
        "spoken_text": texts,
        "error": pa.array(errors, pa.string()),
        "qc_flags": pa.array([["too_fast"] if i == 4 else [] for i in range(rows)], pa.list_(pa.string())),
    })  # fmt: skip


def test_the_stage_adds_transcripts_rates_and_flags(recogniser_folder: str) -> None:
    table = _stage_table(6)
    settings = AsrSettings(enabled=True, model=recogniser_folder, device="cpu", batch_size=4)
    out = AsrStage(settings.model_dump())(table)
    assert out.column_names == [*table.column_names, "asr_text", "asr_error_rate"]
    assert out.column("pcm").equals(table.column("pcm"))  # the audio goes on to the store untouched
    heard, rates = out.column("asr_text").to_pylist(), out.column("asr_error_rate").to_pylist()
    flags, texts = out.column("qc_flags").to_pylist(), table.column("spoken_text").to_pylist()
    for i in (1, 3):  # no audio, an error row: nothing to hear
        assert heard[i] is None and rates[i] is None and flags[i] == []
    assert heard[2] is not None and rates[2] is None and FLAG not in flags[2]  # tags only: heard, not scored
    for i in (0, 4, 5):
        assert isinstance(heard[i], str) and rates[i] == pytest.approx(error_rate(texts[i], heard[i]))
        assert (FLAG in flags[i]) == (rates[i] > settings.max_error_rate)
    assert flags[4][0] == "too_fast"  # the engine's flags are kept
    # Deterministic: the same audio heard again gives the same transcript; a lenient threshold flags nothing.
    lenient = AsrSettings(enabled=True, model=recogniser_folder, device="cpu", max_error_rate=1e9)
    again = AsrStage(lenient.model_dump())(table)
    assert again.column("asr_text").to_pylist() == heard
    assert all(FLAG not in (f or []) for f in again.column("qc_flags").to_pylist())


def test_the_recogniser_resamples_to_its_rate_and_keeps_the_order(recogniser_folder: str) -> None:
    """Each row gets its own transcript back, in order. (batch_size 1: in a padded batch a model may hear a row a
    little differently, so transcripts are compared unbatched.)"""
    recogniser = Recogniser(AsrSettings(model=recogniser_folder, device="cpu", batch_size=1))
    assert recogniser.rate == 16000 and not recogniser.whisper
    rng = np.random.default_rng(1)
    audios = [clean(rng)[0] for _ in range(3)]
    together = recogniser.transcribe(audios, ["a b", "c d", "e f"])
    alone = [recogniser.transcribe([a], ["x"])[0] for a in audios]
    assert together == alone


def test_a_folder_without_safetensors_weights_is_refused(recogniser_folder: str, tmp_path: Path) -> None:
    """Never a pickle: a model whose weights are only pytorch_model.bin does not load."""
    import shutil

    folder = tmp_path / "pickled"
    shutil.copytree(recogniser_folder, folder)
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")  # a loadable pickle
    (folder / "model.safetensors").unlink()
    with pytest.raises((OSError, ValueError), match="safetensors"):
        Recogniser(AsrSettings(model=str(folder), device="cpu"))


def test_whisper_is_told_each_rows_language(tmp_path: Path) -> None:
    """The default recogniser is a Whisper model: the rows of one call are grouped by the language of their
    spoken_text and each group generates with its language token (a random-weight Whisper in the real layout hears
    the same audio differently under <|zh|> and <|en|>, so a row given the wrong language would show)."""
    folder = write_tiny_recogniser(str(tmp_path / "whisper"), kind="whisper")
    recogniser = Recogniser(AsrSettings(model=folder, device="cpu", batch_size=1))
    assert recogniser.whisper and recogniser.rate == 16000
    audio = clean(np.random.default_rng(2))[0]
    as_zh, as_en = recogniser.transcribe([audio], ["你好"]), recogniser.transcribe([audio], ["hello"])
    assert as_zh != as_en
    assert recogniser.transcribe([audio, audio, audio], ["hello", "你好", "hi there"]) == [*as_en, *as_zh, *as_en]
    with pytest.raises(ValueError, match="ctc or whisper"):
        write_tiny_recogniser(str(tmp_path / "x"), kind="rnnt")
