"""What a caller asks the engine for and what it gets back, and the one way a raw row's fields become a request.

`SynthesisRequest` / `SynthesisResult` are what every front end (the Ray Data stage, Serve, `raytts synth`) hands
to a `Synthesizer`; `request_from_fields` validates a row's JSON fields (types, sampling overrides) into a request,
raising `RequestError` with the row's source in the message. Torch-free at import.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .engine.params import SamplingParams
from .model.config import NUM_VQ, SAMPLE_RATE
from .text import DEFAULT_NORMALIZE, DEFAULT_PROMPT, FrontEnd
from .validation import RequestError

if TYPE_CHECKING:
    import torch

SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens", "min_new_tokens")
KNOWN_FIELDS = {
    "id",
    "text",
    "speaker",
    "seed",
    "prompt",
    "reference_audio",
    "reference_text",
    "reference_codes",
    *SAMPLING_FIELDS,
}


@dataclass
class SynthesisRequest:
    id: str
    text: str
    speaker: str | None = None  # "seed:N" or an upstream speaker string
    reference_codes: torch.Tensor | None = None  # [num_vq, P] prompt codes (from reference audio)
    reference_text: str = ""  # transcript of the reference audio
    params: SamplingParams = field(default_factory=SamplingParams)
    normalize: str = DEFAULT_NORMALIZE  # the text front end's mode: full, upstream or off (actors/text.py)
    strict: bool = False  # text with characters the model cannot say fails instead of losing them
    prompt: str = DEFAULT_PROMPT  # control tags placed before the text, e.g. "[speed_3][oral_2]"
    # What a CPU stage's `text_front_end` made of `text` (the offline job): each segment's token ids, the spoken text
    # and the characters dropped; None: the engine cleans, splits and tokenises `text` itself.
    front_end: FrontEnd | None = None


@dataclass
class SynthesisResult:
    id: str
    text: str
    audio: np.ndarray | None = None  # float32 mono at `sample_rate`
    codes: np.ndarray | None = None  # [T, num_vq] int16, segments concatenated
    sample_rate: int = SAMPLE_RATE
    segments: int = 0
    truncated_segments: int = 0  # segments that hit max_new_tokens before EOS
    error: str | None = None
    spoken_text: str | None = None  # the text the model was asked to say (after the front end), None on error
    dropped: str | None = None  # characters the front end deleted because it cannot speak them ("" when none)

    @property
    def ok(self) -> bool:
        return self.error is None


def request_from_fields(
    source: str,
    row_id: str | None,
    data: dict[str, Any],
    defaults: SamplingParams,
    speaker: str | None,
    normalize: str,
    strict: bool = False,
) -> SynthesisRequest:
    """A row's fields (text, speaker, seed, prompt, reference_text, sampling overrides) -> a request, with the job's
    `defaults` and default `speaker`; raises RequestError naming `source` (the row's file:line)."""
    text = data.get("text")
    if not isinstance(text, str):
        raise RequestError(f"{source}: text must be a string, got {type(text).__name__}")
    overrides: dict[str, Any] = {}
    for name in SAMPLING_FIELDS:
        if data.get(name) is not None:
            integer = name in ("top_k", "max_new_tokens", "min_new_tokens")
            overrides[name] = _number(source, name, data[name], integer=integer)
    if data.get("seed") is not None:
        overrides["seed"] = _number(source, "seed", data["seed"], integer=True)
    row_speaker = data.get("speaker") if data.get("speaker") not in (None, "") else speaker  # null/"": the default
    if row_speaker is not None and not isinstance(row_speaker, str):
        raise RequestError(f"{source}: speaker must be a string ('seed:N' or a speaker string)")
    params = dataclasses.replace(defaults, **overrides)
    try:
        params.validate(NUM_VQ)
    except ValueError as err:
        raise RequestError(f"{source}: {err}") from None
    prompt = data.get("prompt", DEFAULT_PROMPT)
    if not isinstance(prompt, str):
        raise RequestError(f"{source}: prompt must be a string of control tags such as {DEFAULT_PROMPT}")
    reference_text = data.get("reference_text") or ""
    if not isinstance(reference_text, str):
        raise RequestError(f"{source}: reference_text must be a string")
    return SynthesisRequest(
        id=row_id or "",
        text=text,
        speaker=row_speaker,
        reference_text=reference_text,
        params=params,
        normalize=normalize,
        strict=strict,
        prompt=prompt,
    )


def _number(source: str, name: str, value: Any, integer: bool) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestError(f"{source}: {name} must be a number, got {type(value).__name__} {value!r:.30}")
    if integer:
        if isinstance(value, float) and not value.is_integer():
            raise RequestError(f"{source}: {name} must be an integer, got {value}")
        return int(value)
    return float(value)


def with_source(message: str, source: str) -> str:
    """An error message that names its row: `source: message` unless it already starts with the source."""
    return message if message.startswith(source) else f"{source}: {message}"
