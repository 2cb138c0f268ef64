"""The ASR round trip (`AsrSettings`, off by default): a speech recogniser transcribes each row's audio and the row
records what it heard (`asr_text`) and the error rate of that against `spoken_text` (`asr_error_rate`), raising the
`asr_mismatch` flag over `max_error_rate`. The signal measures (`actors.quality`) catch silence, clipping, loops and
a rate far off; only a recogniser hears a wrong or skipped word at an ordinary rate.

The recogniser is a Hugging Face `transformers` automatic-speech-recognition pipeline (Whisper for Chinese and
English alike; any CTC model works), loaded from safetensors only. Audio is resampled from 24 kHz to the model's rate
with soxr (the pipeline's own resampler needs torchaudio). The error rate is jiwer's: characters for rows with
Chinese, words otherwise, over texts lower-cased with control tags and punctuation removed. In a job the recogniser
runs in its own Ray Data actors between the engine and the store stage (`AsrStage`), on CPU or a GPU share.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

import numpy as np

from .model.config import SAMPLE_RATE
from .settings import AsrSettings

_TAG = re.compile(r"\[\w+\]")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
_LATIN = re.compile(r"[A-Za-z]{2,}")
FLAG = "asr_mismatch"


def plain(text: str) -> str:
    """Lower case, control tags and punctuation removed (an apostrophe inside a word kept), spaces collapsed: what
    error rates compare."""
    text = _TAG.sub(" ", text or "").lower().replace("\u2019", "'")
    kept = "".join(" " if unicodedata.category(ch)[0] in "PSZC" and ch != "'" else ch for ch in text)
    return " ".join(word for word in (w.strip("'") for w in kept.split()) if word)  # don't keeps its apostrophe


def error_rate(reference: str, heard: str) -> float | None:
    """jiwer's character error rate for a reference with Chinese (spaces ignored), else its word error rate; None
    when the reference has nothing to say (tags only)."""
    import jiwer

    reference, heard = plain(reference), plain(heard)
    if not reference:
        return None
    if _CJK.search(reference):
        return float(jiwer.cer(reference.replace(" ", ""), heard.replace(" ", "")))
    return float(jiwer.wer(reference, heard))


def language(text: str) -> str | None:
    """zh or en for a Whisper model's language token (None: let it detect the language)."""
    zh, en = _CJK.search(text or ""), _LATIN.search(_TAG.sub(" ", text or ""))
    return "zh" if zh else "en" if en else None


class Recogniser:
    """One loaded speech-recognition pipeline."""

    def __init__(self, settings: AsrSettings) -> None:
        import torch
        from transformers import pipeline

        device = settings.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.pipe = pipeline(
                "automatic-speech-recognition",
                model=settings.model,
                device=device,
                dtype=torch.float16 if device == "cuda" else torch.float32,
                model_kwargs={"use_safetensors": True},  # never a pickle
            )
        except (OSError, ValueError) as err:
            raise ValueError(
                f"cannot load the ASR model {settings.model!r}: asr.model must name a transformers speech-recognition "
                f"model with safetensors weights (a Hugging Face hub id or a local folder), or set asr.enabled: false "
                f"({err})"
            ) from err
        self.rate = int(self.pipe.feature_extractor.sampling_rate)
        self.whisper = self.pipe.model.config.model_type == "whisper"
        self.batch_size = settings.batch_size

    def transcribe(self, audios: list[np.ndarray], texts: list[str]) -> list[str]:
        """What the model hears in each float32 waveform at SAMPLE_RATE (`texts` choose Whisper's language)."""
        import soxr

        inputs = [
            {"raw": soxr.resample(np.asarray(a, np.float32), SAMPLE_RATE, self.rate), "sampling_rate": self.rate}
            for a in audios
        ]
        heard = [""] * len(inputs)
        groups: dict[str | None, list[int]] = {}
        for i, text in enumerate(texts):
            groups.setdefault(language(text) if self.whisper else None, []).append(i)
        for lang, rows in groups.items():
            kwargs: dict[str, Any] = {"batch_size": self.batch_size}
            if self.whisper:
                kwargs["generate_kwargs"] = {"task": "transcribe", **({"language": lang} if lang else {})}
            for i, out in zip(rows, self.pipe([inputs[i] for i in rows], **kwargs), strict=True):
                heard[i] = out["text"].strip()
        return heard


class AsrStage:
    """The Ray Data stage between the engine and the store: adds `asr_text` and `asr_error_rate` to each row with
    audio (its `pcm`), and `asr_mismatch` to its `qc_flags` over `max_error_rate`; rows without audio pass as they
    are, with nulls."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = AsrSettings.model_validate(settings)
        self.recogniser = Recogniser(self.settings)

    def __call__(self, table: Any) -> Any:
        import pyarrow as pa

        pcm = table.column("pcm").combine_chunks()
        flat, bounds = pcm.values.to_numpy(zero_copy_only=False), pcm.offsets.to_numpy()
        texts = table.column("spoken_text").to_pylist()
        errors = table.column("error").to_pylist()
        flags = table.column("qc_flags").to_pylist()
        rows = [i for i in range(table.num_rows) if errors[i] is None and bounds[i + 1] > bounds[i] and texts[i]]
        audios = [flat[bounds[i] : bounds[i + 1]].astype(np.float32) / 32767.0 for i in rows]
        heard_text: list[str | None] = [None] * table.num_rows
        rates: list[float | None] = [None] * table.num_rows
        for i, heard in zip(rows, self.recogniser.transcribe(audios, [texts[i] for i in rows]), strict=True):
            heard_text[i], rates[i] = heard, error_rate(texts[i], heard)
            if rates[i] is not None and rates[i] > self.settings.max_error_rate:
                flags[i] = [*(flags[i] or []), FLAG]
        table = table.set_column(
            table.schema.get_field_index("qc_flags"), "qc_flags", pa.array(flags, pa.list_(pa.string()))
        )
        table = table.append_column("asr_text", pa.array(heard_text, pa.string()))
        return table.append_column("asr_error_rate", pa.array(rates, pa.float64()))


def write_tiny_recogniser(folder: str, seed: int = 0, kind: str = "ctc") -> str:
    """A random-weight recogniser in the transformers layout (config, safetensors weights, feature extractor,
    tokenizer): the plumbing's test model, since no real one can be downloaded here. `ctc`: a wav2vec2 CTC model with
    a character vocabulary; `whisper`: a Whisper encoder-decoder with a byte-level vocabulary, the zh and en language
    tokens and the task tokens, generated like a real multilingual Whisper. Each hears random characters,
    deterministically for a seed."""
    from pathlib import Path

    import torch

    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    if kind == "whisper":
        _write_tiny_whisper(path)
    elif kind == "ctc":
        _write_tiny_ctc(path)
    else:
        raise ValueError(f"kind must be ctc or whisper, got {kind!r}")
    return str(path)


def _write_tiny_ctc(path: Any) -> None:
    import json

    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
        Wav2Vec2Processor,
    )

    vocab = {"<pad>": 0, "<unk>": 1, "|": 2, **{c: i + 3 for i, c in enumerate("abcdefghijklmnopqrstuvwxyz'")}}
    (path / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = Wav2Vec2CTCTokenizer(str(path / "vocab.json"), unk_token="<unk>", pad_token="<pad>")
    extractor = Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True, return_attention_mask=True)
    config = Wav2Vec2Config(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(32, 32, 32), conv_stride=(5, 4, 4), conv_kernel=(10, 4, 4), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2, pad_token_id=0, do_stable_layer_norm=True, feat_extract_norm="layer",
    )  # fmt: skip
    Wav2Vec2ForCTC(config).eval().save_pretrained(path)
    Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(path)


WHISPER_SPECIALS = (
    "<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|zh|>", "<|translate|>", "<|transcribe|>", "<|startoflm|>",
    "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>",
)  # fmt: skip


def _write_tiny_whisper(path: Any) -> None:
    import json

    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_chars = bytes_to_unicode()
    vocab = {byte_chars[b]: b for b in range(256)}
    ids = {token: 256 + i for i, token in enumerate(WHISPER_SPECIALS)}
    (path / "vocab.json").write_text(json.dumps({**vocab, **ids}))
    (path / "merges.txt").write_text("#version: 0.2\n")
    end = ids["<|endoftext|>"]
    tokenizer = WhisperTokenizer(str(path / "vocab.json"), str(path / "merges.txt"), unk_token="<|endoftext|>",
                                 bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>")  # fmt: skip
    tokens = {"pad_token_id": end, "bos_token_id": end, "eos_token_id": end,
              "decoder_start_token_id": ids["<|startoftranscript|>"]}  # fmt: skip
    config = WhisperConfig(
        vocab_size=256 + len(ids), num_mel_bins=80, d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_source_positions=1500, max_target_positions=64, suppress_tokens=[], begin_suppress_tokens=[], **tokens,
    )  # fmt: skip
    model = WhisperForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        **tokens, max_length=48, is_multilingual=True, suppress_tokens=[], begin_suppress_tokens=[],
        lang_to_id={"<|en|>": ids["<|en|>"], "<|zh|>": ids["<|zh|>"]},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        no_timestamps_token_id=ids["<|notimestamps|>"],
    )  # fmt: skip
    model.save_pretrained(path)
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tokenizer).save_pretrained(
        path
    )
