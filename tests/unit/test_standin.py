"""The stand-in engine of the CPU-stage benchmarks (`actors/replica/standin.py`): the real replica's interface and
host work around a clock instead of a model. Its output is not speech; these tests hold it to what the benchmark
relies on: every row comes back, in order, with audio of the length its text implies, passing the quality checks
(no re-takes distort the measured costs), paced at the rate asked, named as the stand-in in every row, and never
over a real model."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.model.config import SAMPLES_PER_FRAME, STEPS_PER_SECOND
from actors.quality import QualityPolicy, measure
from actors.replica.standin import (
    ENV,
    PROMPT_TOKENS,
    SECONDS_PER_TOKEN,
    SIGNAL_SECONDS,
    StandInSynthesizer,
    _cut,
    rows_per_s_from_env,
    speechlike,
)
from actors.requests import SynthesisRequest


@pytest.fixture(scope="module")
def standin() -> StandInSynthesizer:
    return StandInSynthesizer("tiny", math.inf)


def _frames(synth: StandInSynthesizer, text: str) -> int:
    """The frames the stand-in gives a one-segment row: 0.3 s per spoken token of its prompt."""
    results, segments = synth.prepare([SynthesisRequest(id="x", text=text)])
    assert results[0].error is None and len(segments) == 1
    spoken = max(1, len(segments[0].prompt.token_ids) - PROMPT_TOKENS)
    return max(1, round(spoken * SECONDS_PER_TOKEN * STEPS_PER_SECOND))


def test_every_row_comes_back_in_order_with_audio_of_its_length(standin):
    texts = [
        "Hello there.",
        "The quick brown fox jumps over the lazy dog, and then it runs back again.",
        "你好，欢迎使用语音合成。",
    ]
    requests = [SynthesisRequest(id=str(i), text=t) for i, t in enumerate(texts)]
    requests.append(SynthesisRequest(id="bad", text=""))  # refused as the real replica refuses it
    results = standin.synthesize(requests)
    assert [r.id for r in results] == ["0", "1", "2", "bad"]
    for text, result in zip(texts, results, strict=False):
        assert result.error is None
        frames = _frames(standin, text)
        assert result.audio.shape == (frames * SAMPLES_PER_FRAME,) and result.codes.shape == (frames, 4)
        assert result.quality_flags == []
    assert results[-1].error and results[-1].audio is None
    assert standin.checkpoint.model_id.startswith("standin-engine(inf rows/s) over tiny@sha256:")
    assert not standin.busy


@settings(max_examples=25, deadline=None)
@given(seconds=st.floats(0.3, 70.0), units_per_second=st.floats(1.5, 3.2))
def test_its_audio_passes_the_quality_checks_at_speech_pace(seconds, units_per_second):
    """At any length (longer than the 30 s signal: repeated) and a pace of speech between 1.5 and 3.2 units a
    second, the stand-in's audio raises no flag: a benchmark's rows are never re-taken or failed for quality."""
    frames = max(1, round(seconds * STEPS_PER_SECOND))
    audio = _cut(speechlike(SIGNAL_SECONDS), frames * SAMPLES_PER_FRAME)
    codes = _cut(np.random.default_rng(0).integers(0, 626, (int(SIGNAL_SECONDS * STEPS_PER_SECOND), 4)), frames)
    text = " ".join(["word"] * math.ceil(seconds * units_per_second))
    assert QualityPolicy().flags(measure(audio, codes, text, 0)) == []


def test_segments_finish_one_after_another_at_the_rate():
    """A serial server: each queued segment is due 1/rate after the one before; cancelled ones leave the queue."""
    synth = StandInSynthesizer("tiny", 50.0)
    _, segments = synth.prepare([SynthesisRequest(id=str(i), text="Hello there.") for i in range(5)])
    for index, segment in enumerate(segments):
        synth.submit(segment, ("call", index, 0))
    dues = [p.due for p in synth._pending]
    assert np.allclose(np.diff(dues), 1 / 50.0)
    assert synth.cancel(lambda key: key[1] >= 3) == 2 and len(synth._pending) == 3
    while synth.busy:
        synth.pump()


def test_it_refuses_a_real_model_and_reads_its_rate_from_the_environment(monkeypatch):
    with pytest.raises(ValueError, match="runs only with model 'tiny'"):
        StandInSynthesizer("hf://2Noise/ChatTTS", 100.0)
    monkeypatch.delenv(ENV, raising=False)
    assert rows_per_s_from_env() is None
    monkeypatch.setenv(ENV, "inf")
    assert rows_per_s_from_env() == math.inf
    for bad in ("fast", "0", "-3"):
        monkeypatch.setenv(ENV, bad)
        with pytest.raises(ValueError, match=ENV):
            rows_per_s_from_env()


def test_the_tts_stage_runs_it_when_the_benchmark_asks(monkeypatch):
    """The job's real TTS stage (in-process, no Ray) with RAYTTS_STANDIN_ROWS_PER_S set: prepared rows in, audio
    rows out, every row's `model` naming the stand-in."""
    from actors.tts_stage import StageSettings, TTSStage
    from pipeline.job import tokenizer_of
    from pipeline.prepare import prepare_rows

    monkeypatch.setenv(ENV, "1000")
    stage = TTSStage(StageSettings(model="tiny").model_dump(), speakers={})
    rows = pa.table({
        "id": ["a", "b"], "text": ["hello there.", "good morning, 42 cats."], "source": ["t.jsonl:1", "t.jsonl:2"],
        "fields": ["{}", "{}"], "error": pa.array([None, None], pa.string()),
    })  # fmt: skip
    settings = {"speaker": None, "normalize": "full", "max_segment_tokens": 120, "max_chars": 1000, "references": {}}
    out = asyncio.run(stage(prepare_rows(rows, tokenizer_of("tiny", "auto"), settings)))
    stage.engine.close()
    assert out.column("error").to_pylist() == [None, None]
    assert all(m.startswith("standin-engine(1000 rows/s)") for m in out.column("model").to_pylist())
    assert all(len(p) > 0 for p in out.column("pcm").to_pylist())
    assert out.column("qc_flags").to_pylist() == [[], []]
