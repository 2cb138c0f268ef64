"""The one row path of `raytts synth` and the offline job's engine stage: a row's fields into a request (or the
reason it cannot be one), and a result into the row's columns (everything but its encoded audio, which each writer
adds: `pipeline.output.audio_fields`).

Errors carry a kind (`ErrorKind`) as well as their message, so no caller has to tell them apart by their words.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from .requests import RefineOptions, SynthesisRequest, SynthesisResult, request_from_fields, with_source
from .speaker import SpeakerError
from .text import Reading
from .validation import RequestError
from .voices import RowVoices

# input: the row or request cannot be synthesised as given (fix the row); model: the model made no usable audio
# (retry with another seed); engine: the engine failed while the row ran (retry as it is); output: the row's audio
# could not be written (fix the output location, retry).
ErrorKind = Literal["input", "model", "engine", "output", "quality"]
ERROR_KINDS: tuple[str, ...] = ("input", "model", "engine", "output", "quality")

REFINE_ONLY_WRITES_NO_AUDIO = (
    "refine only (the refined text without audio) is not available in raytts run, which writes audio; use raytts "
    "synth --refine-only or Serve's /v1/tts with refine: {only: true}"
)


@dataclass(frozen=True)
class RowDefaults:
    """What a front end gives rows that do not say: sampling, speaker, text reading and the refine stage."""

    sampling: Any  # actors.engine.params.SamplingParams
    speaker: str | None
    normalize: str
    strict: bool
    refine: RefineOptions
    refine_only_allowed: bool = True  # False where audio must be written (the offline job)
    reading: Reading = Reading()  # date order and the user's replacements


def request_for_row(
    source: str, row_id: str | None, fields: dict[str, Any], defaults: RowDefaults, voices: RowVoices
) -> tuple[SynthesisRequest, str | None]:
    """A row's fields -> (its request with its voice applied, the speaker the row names: its `speaker` column);
    raises RequestError naming `source`."""
    try:
        request = request_from_fields(
            source, row_id, fields, defaults.sampling, defaults.speaker, defaults.normalize, defaults.strict,
            defaults.refine, defaults.reading,
        )  # fmt: skip
        if not defaults.refine_only_allowed and request.refine.enabled and request.refine.only:
            raise RequestError(REFINE_ONLY_WRITES_NO_AUDIO)
        speaker = voices.apply(request, fields)
    except (RequestError, SpeakerError, ValueError) as err:
        raise RequestError(with_source(str(err), source)) from None
    return request, speaker


def failed(row_id: str | None, text: Any, error: str, kind: ErrorKind = "input") -> SynthesisResult:
    return SynthesisResult(id=row_id or "", text=text if isinstance(text, str) else "", error=error, error_kind=kind)


def result_columns(
    result: SynthesisResult, source: str, speaker: str | None, seed: int | None, model: str, save_codes: bool
) -> dict[str, Any]:
    """The row's columns of a result, but its audio: the same in `raytts synth`'s Parquet and the job's parts.
    `speaker`, `seed`: what the row's request used (none for a row that failed before it had one)."""
    ok = result.error is None
    return {
        "id": result.id or None,
        "text": result.text,
        "source": source,
        "speaker": speaker,
        "seed": result.seed if result.seed is not None else seed,  # a kept re-take's own seed
        "segments": result.segments if ok else None,
        "truncated_segments": result.truncated_segments if ok else None,
        "codes": result.codes.tolist() if ok and save_codes and result.codes is not None else None,
        "model": model,
        "error": result.error,
        "error_kind": result.error_kind if not ok else None,
        "spoken_text": result.spoken_text if ok else None,
        "dropped_chars": result.dropped if ok else None,
        "reading_notes": result.notes if ok else None,
        "qc": result.quality.as_dict() if result.quality is not None else None,
        "qc_flags": result.quality_flags,
        "qc_attempts": result.attempts,
    }
