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

from .engine.params import REFINE_PARAMS, SamplingParams
from .model.config import NUM_VQ, SAMPLE_RATE
from .quality import QualityMeasures, QualityPolicy
from .text import DEFAULT_NORMALIZE, DEFAULT_PROMPT, FrontEnd, Reading
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
    "refine",
    *SAMPLING_FIELDS,
}
# A refine stage's seed, when not given, is the row's seed mixed with this (its stream differs from the code stage's).
REFINE_SEED_SALT = 0x5EF1_4E5E_ED00_7E47


@dataclass(frozen=True)
class RefineOptions:
    """Upstream's refine-text stage for a request: the GPT rewrites each segment's text with prosody tags
    (`[uv_break]`, `[laugh]`, ...) from its text head before the code stage speaks it. On by default, as upstream's
    `infer(skip_refine_text=False)`; sampling defaults are upstream's `RefineTextParams`."""

    enabled: bool = True
    prompt: str = ""  # control tags after [Pbreak], e.g. "[oral_2][laugh_0][break_6]"
    temperature: float = REFINE_PARAMS.temperature  # type: ignore[assignment]
    top_p: float = REFINE_PARAMS.top_p
    top_k: int = REFINE_PARAMS.top_k
    repetition_penalty: float = REFINE_PARAMS.repetition_penalty
    # None: upstream's 384, or as many as the replica's rows hold when fewer (a value given is checked, never cut)
    max_new_tokens: int | None = None
    min_new_tokens: int = REFINE_PARAMS.min_new_tokens
    seed: int | None = None  # None: derived from the row's seed
    only: bool = False  # return the refined text without audio (upstream's refine_text_only)

    def params(self, row_seed: int, room: int | None = None) -> SamplingParams:
        """The refine stage's sampling parameters for a row seeded `row_seed`, on a replica whose rows hold `room`
        new tokens (caps the default max_new_tokens)."""
        seed = self.seed if self.seed is not None else (row_seed ^ REFINE_SEED_SALT) % 2**63
        max_new = self.max_new_tokens
        if max_new is None:
            max_new = REFINE_PARAMS.max_new_tokens if room is None else max(1, min(REFINE_PARAMS.max_new_tokens, room))
        return SamplingParams(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            repetition_penalty=self.repetition_penalty,
            max_new_tokens=max_new,
            min_new_tokens=self.min_new_tokens,
            seed=seed,
        )


REFINE_FIELDS = {f.name for f in dataclasses.fields(RefineOptions)}


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
    reading: Reading = field(default_factory=Reading)  # date order and the user's replacements (actors/text.py)
    refine: RefineOptions = field(default_factory=RefineOptions)  # the refine-text stage before the code stage
    prompt: str = DEFAULT_PROMPT  # control tags placed before the text, e.g. "[speed_3][oral_2]"
    # What a CPU stage's `text_front_end` made of `text` (the offline job): each segment's token ids, the spoken text
    # and the characters dropped; None: the engine cleans, splits and tokenises `text` itself.
    front_end: FrontEnd | None = None
    quality: QualityPolicy | None = None  # this request's quality policy (Serve's `qc`); None: the replica's


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
    # the text the model was asked to say (after the front end and, when it ran, the refine-text stage), None on error
    spoken_text: str | None = None
    dropped: str | None = None  # characters the front end deleted because it cannot speak them ("" when none)
    notes: str | None = None  # what the reading replaced or had to guess ("" when nothing; `FrontEnd.notes`)
    quality: QualityMeasures | None = None  # the row's quality measures (`actors.quality`), None without audio
    quality_flags: list[str] | None = None  # the flags its measures raised under the replica's policy
    attempts: int = 1  # takes made of this row (quality on_fail: retake); the result is the best of them
    seed: int | None = None  # the kept take's seed when a re-take was kept (None: the request's own seed)
    refine_only: bool = False  # the refined text is the result: no audio, no codes
    error_kind: str | None = None  # with `error`: input, model, engine or output (`actors.rows.ERROR_KINDS`)
    quality_policy: QualityPolicy | None = field(default=None, repr=False)  # its request's `quality`, if any

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
    refine: RefineOptions | None = None,
    reading: Reading | None = None,
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
        refine=refine_from_field(source, data.get("refine"), refine or RefineOptions()),
        id=row_id or "",
        text=text,
        speaker=row_speaker,
        reference_text=reference_text,
        params=params,
        normalize=normalize,
        strict=strict,
        reading=reading or Reading(),
        prompt=prompt,
    )


def refine_from_field(source: str, value: Any, default: RefineOptions) -> RefineOptions:
    """A row's `refine` field over the job's default: null (the default), true/false (on/off), or an object of
    RefineOptions' fields (`{"prompt": "[oral_2][laugh_0][break_6]", "temperature": 0.5, "seed": 3}`)."""
    if value is None:
        return default
    if isinstance(value, bool):
        return dataclasses.replace(default, enabled=value)
    if not isinstance(value, dict):
        raise RequestError(f"{source}: refine must be true, false or an object of {sorted(REFINE_FIELDS)}")
    unknown = sorted(set(value) - REFINE_FIELDS)
    if unknown:
        raise RequestError(f"{source}: refine has unknown keys {unknown}; known: {sorted(REFINE_FIELDS)}")
    changes: dict[str, Any] = {}
    for name, item in value.items():
        if item is None:
            changes[name] = None if name in ("seed", "max_new_tokens") else getattr(RefineOptions, name)
            continue
        if name in ("enabled", "only"):
            if not isinstance(item, bool):
                raise RequestError(f"{source}: refine.{name} must be true or false, got {item!r:.30}")
            changes[name] = item
        elif name == "prompt":
            if not isinstance(item, str):
                raise RequestError(f"{source}: refine.prompt must be a string of control tags such as [oral_2]")
            changes[name] = item
        elif item is not None:
            integer = name in ("top_k", "max_new_tokens", "min_new_tokens", "seed")
            changes[name] = _number(source, f"refine.{name}", item, integer=integer)
    refine = dataclasses.replace(default, **changes)
    if refine.only and not refine.enabled:
        raise RequestError(f"{source}: refine.only needs the refine stage on (enabled: true)")
    try:
        refine.params(0, room=refine.max_new_tokens or REFINE_PARAMS.max_new_tokens).validate(1)
    except ValueError as err:
        raise RequestError(f"{source}: refine: {err}") from None
    if refine.seed is not None and not 0 <= refine.seed < 2**63:
        raise RequestError(f"{source}: refine.seed must be in [0, 2**63), got {refine.seed}")
    return refine


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
