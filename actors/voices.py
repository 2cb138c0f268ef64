"""Voices: which speaker a row or request is synthesised with, and reference audio turned into prompt codes.

One set of rules for every front end: `RowVoices` resolves a row's voice the same way in `raytts run` (the Ray Data
stage) and `raytts synth`; Serve's named voices (`voice_from_spec`) read reference audio with the same reader and
encoder. A voice is a seeded or upstream speaker string, or reference codes with their transcript:
- a row's `reference_audio` is encoded once per file where the engine runs in-process (`raytts synth`); a
  distributed job refuses it, pointing to `inputs.speakers` (encoded once per job, not per row per actor);
- a row's `reference_codes` (an upstream prompt string) is decoded, never re-encoded;
- a row's `speaker` naming a reference speaker (`inputs.speakers`) takes its codes and, unless the row gives one,
  its transcript; a speaker that looks like a name but is none of them is an error, not a silent seed;
- reference audio must be 8 kHz or more, mono or [samples, channels], 0.1-8 s of finite samples.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .model.config import NUM_VQ, SAMPLE_RATE
from .requests import SynthesisRequest
from .validation import RequestError

if TYPE_CHECKING:
    import torch

MIN_REFERENCE_RATE = 8000
MAX_REFERENCE_SECONDS = 8.0


@dataclass
class Voice:
    """A resolved voice: a speaker string ('seed:N' or upstream's), or reference codes with their transcript."""

    speaker: str | None = None
    reference_codes: Any = None  # torch.Tensor [num_vq, P]
    reference_text: str = ""


def row_voice(fields: dict[str, Any], default_speaker: str | None, references: dict[str, Any]) -> tuple[Any, str]:
    """(speaker, transcript) a row is synthesised with: the row's speaker (null/"" -> the job's default) and
    reference_text, except that a reference speaker's name (in `references`, when the row carries no
    reference_codes of its own) becomes its encoded codes: no speaker embedding, and its transcript unless the row
    gives one. Used by the CPU stage that tokenises (the prompt depends on both) and by `RowVoices`."""
    name = fields.get("speaker") if fields.get("speaker") not in (None, "") else default_speaker
    transcript = fields.get("reference_text") or ""
    if not fields.get("reference_codes") and isinstance(name, str) and name in references:
        entry = references[name]
        return None, transcript or (entry.get("text") or "")
    return name, transcript


def looks_like_a_name(value: str) -> bool:
    """A short plain word (`narrator`, `bob-2`): meant as a reference speaker's name, not a speaker string."""
    return (
        len(value) <= 100
        and all(ch.isalnum() and ch.isascii() or ch in "._-" for ch in value)
        and not value.startswith("seed")
    )


def reference_codes_from_prompt(text: str, num_vq: int = NUM_VQ) -> torch.Tensor:
    """An upstream reference prompt string (`spk_smp`) -> codes, raising RequestError on a bad string."""
    from .speaker import SpeakerError, decode_prompt

    try:
        return decode_prompt(text, num_vq)
    except SpeakerError as err:
        raise RequestError(str(err)) from None


class RowVoices:
    """The voice rules of row-based jobs (`raytts run`, `raytts synth`) over one set of reference speakers.

    `references`: reference speaker name -> {"prompt": upstream prompt string, "text": transcript} or {"error": why}.
    `encode_file`: reference audio path -> codes, where a row's own `reference_audio` may be encoded (None: refused).
    """

    def __init__(
        self,
        default_speaker: str | None,
        references: dict[str, dict[str, Any]],
        encode_file: Callable[[str], torch.Tensor] | None = None,
    ) -> None:
        self.default_speaker = default_speaker
        self.references = references
        self.encode_file = encode_file

    def apply(self, request: SynthesisRequest, fields: dict[str, Any]) -> str | None:
        """Set the request's speaker / reference codes / transcript from the row's fields; returns the speaker the
        row names (its output `speaker` column). Raises RequestError for a voice that cannot be used."""
        name = request.speaker
        if fields.get("reference_audio"):
            if self.encode_file is None:
                raise RequestError(
                    "reference_audio per row is not read by `raytts run` (it would re-encode the audio for every "
                    "row): list the audio in inputs.speakers, where each speaker is encoded once, and name it in "
                    "the row's `speaker`"
                )
            request.reference_codes = self.encode_file(str(fields["reference_audio"]))
        elif fields.get("reference_codes"):  # an upstream prompt string: decoded, no encoding
            request.reference_codes = reference_codes_from_prompt(str(fields["reference_codes"]))
        elif name is not None and name in self.references:
            entry = self.references[name]
            if entry.get("error"):
                raise RequestError(f"speaker {name!r} is unusable: {entry['error']}")
            request.reference_codes = reference_codes_from_prompt(entry["prompt"])
            request.speaker, request.reference_text = row_voice(fields, self.default_speaker, self.references)
        elif name is not None and looks_like_a_name(name):
            known = sorted(self.references)[:10]
            raise RequestError(
                f"unknown speaker {name!r}: not one of the reference speakers {known} and not 'seed:N' or an "
                f"upstream speaker string"
            )
        return name


def read_reference_audio(path: str, data: bytes | None = None, name: str | None = None) -> tuple[np.ndarray, int]:
    """(float32 samples, sample rate) of a reference clip, from `data` or the file / URI `path` (called `name` in
    errors); RequestError when it cannot be read or its rate is below 8 kHz (too low for speech)."""
    import io

    import soundfile as sf
    from smart_open import open as sopen

    try:
        if data is not None:
            audio, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
        else:
            with sopen(path, "rb") as f:
                audio, rate = sf.read(f, dtype="float32", always_2d=False)
    except (OSError, RuntimeError, ValueError, sf.LibsndfileError) as err:
        raise RequestError(f"reference audio {name or path!r} could not be read ({err})") from None
    if rate < MIN_REFERENCE_RATE:
        raise RequestError(f"sample rate {rate} Hz is too low for speech (need >= {MIN_REFERENCE_RATE} Hz)")
    return np.asarray(audio), int(rate)


def encode_reference(
    dvae: Any, device: Any, audio: np.ndarray, sample_rate: int, max_seconds: float = MAX_REFERENCE_SECONDS
) -> torch.Tensor:
    """Reference speech (any rate, mono or [samples, channels]) -> DVAE prompt codes [num_vq, P] on the host."""
    import torch

    wave = np.asarray(audio, dtype=np.float32)
    if wave.ndim == 2:
        wave = wave.mean(axis=1)
    if wave.ndim != 1:
        raise RequestError(f"reference audio must be mono or [samples, channels], got shape {wave.shape}")
    if sample_rate <= 0:
        raise RequestError(f"reference audio sample rate must be positive, got {sample_rate}")
    if wave.size == 0:
        raise RequestError("reference audio is empty (0 samples)")
    if not np.isfinite(wave).all():
        raise RequestError("reference audio contains NaN or infinite samples")
    seconds = wave.size / sample_rate
    if seconds > max_seconds:
        raise RequestError(
            f"reference audio is {seconds:.1f} s; the limit is {max_seconds:.0f} s: trim it to one clean utterance"
        )
    if sample_rate != SAMPLE_RATE:
        import soxr

        wave = soxr.resample(wave, sample_rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
    if wave.size < 4 * 256:
        raise RequestError(f"reference audio is too short ({seconds * 1000:.0f} ms); give at least 0.1 s")
    with torch.inference_mode():
        return dvae.encode(torch.from_numpy(wave).to(device)).cpu()


class ReferenceEncoder:
    """The DVAE encoder of a checkpoint on the CPU, for encoding reference speakers outside an engine replica (the
    offline job's speaker task): the model is loaded, but no KV cache or batcher is planned."""

    def __init__(self, model: str, fsq: str = "classic", verify: str = "auto") -> None:
        import torch

        from .checkpoint import load_model, read_model_config, resolve

        checkpoint = resolve(model, verify=verify)
        config = read_model_config(checkpoint.asset)
        self.device = torch.device("cpu")
        self.model = load_model(checkpoint.asset, config, self.device, torch.float32, fsq)

    def encode(self, audio: np.ndarray, sample_rate: int) -> torch.Tensor:
        return encode_reference(self.model.dvae, self.device, audio, sample_rate)
