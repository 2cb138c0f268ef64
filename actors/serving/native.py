"""raytts' native `POST /v1/tts` beyond what OpenAI's route does: the body's checks (voice or speaker, streaming,
refine, token limits), its sampling, and its JSON answers (codes; refine-only text)."""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

from fastapi.responses import JSONResponse

from actors.quality import QualityPolicy
from actors.requests import RefineOptions, SynthesisResult

from .api import STREAMABLE, ApiError, AudioEncoder, NativeRequest, check_tags
from .config import ServeConfig


def checked(body: NativeRequest, config: ServeConfig, encoder: AudioEncoder) -> tuple[str, RefineOptions, int]:
    """(the request's control tags, refine options, max_new_tokens) after the checks only the whole body can
    make, in the order a client meets them; raises ApiError 400 naming the field."""
    if body.voice is not None and body.speaker is not None:
        raise ApiError(400, "give either voice or speaker, not both", param="speaker")
    if body.stream and body.qc is not None:
        raise ApiError(400, "qc needs stream=false (a streamed answer is sent before it can be measured)", param="qc")
    if body.stream and body.return_codes:
        raise ApiError(400, "return_codes needs stream=false (codes are complete only at the end)", param="stream")
    if body.stream and encoder.format not in STREAMABLE:
        raise ApiError(400, f"stream=true needs response_format in {list(STREAMABLE)}, got {body.response_format!r}")
    prompt = check_tags(body.prompt, "prompt")
    refine = config.refine.options()
    if isinstance(body.refine, bool):
        refine = dataclasses.replace(refine, enabled=body.refine)
    elif body.refine is not None:
        refine = body.refine.options()
        check_tags(refine.prompt, "refine.prompt")
    if refine.enabled and refine.only and body.stream:
        raise ApiError(400, "refine only answers with text: it needs stream=false", param="refine")
    max_new = body.max_new_tokens or config.max_new_tokens
    if max_new > config.max_new_tokens:
        raise ApiError(
            400, f"max_new_tokens {max_new} exceeds the server's {config.max_new_tokens}", param="max_new_tokens"
        )
    if body.min_new_tokens > max_new:
        raise ApiError(400, f"min_new_tokens {body.min_new_tokens} > max_new_tokens {max_new}", param="min_new_tokens")
    return prompt, refine, max_new


def quality(body: NativeRequest, config: ServeConfig) -> QualityPolicy | None:
    """The request's quality policy: the fields its `qc` gives over the server's `engine.quality` (None: no `qc`)."""
    if body.qc is None:
        return None
    given = {name: getattr(body.qc, name) for name in body.qc.model_fields_set}
    return config.engine.quality.model_copy(update=given).policy()


def sampling(body: NativeRequest, max_new: int) -> dict[str, Any]:
    values = dict(
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        repetition_penalty=body.repetition_penalty,
        min_new_tokens=body.min_new_tokens,
        max_new_tokens=max_new,
    )
    if body.seed is not None:
        values["seed"] = body.seed
    return values


def refine_only_answer(request_id: str, model: str, result: SynthesisResult, headers: dict) -> JSONResponse:
    return JSONResponse(
        {"id": request_id, "model": model, "segments": result.segments, "spoken_text": result.spoken_text,
         "dropped_chars": result.dropped, "reading_notes": result.notes},
        headers=headers,
    )  # fmt: skip


def codes_answer(
    request_id: str, model: str, voice: str | None, result: SynthesisResult, audio: bytes, fmt: str, headers: dict
) -> JSONResponse:
    """The audio as base64 with its codes, spoken text and counts (`return_codes`)."""
    return JSONResponse(
        {
            "id": request_id,
            "model": model,
            "voice": voice,
            "sample_rate": result.sample_rate,
            "duration_s": result.audio.size / result.sample_rate,
            "segments": result.segments,
            "truncated_segments": result.truncated_segments,
            "spoken_text": result.spoken_text,
            "dropped_chars": result.dropped,
            "reading_notes": result.notes,
            "qc": result.quality.as_dict() if result.quality is not None else None,
            "qc_flags": result.quality_flags,
            "qc_attempts": result.attempts,
            "seed": result.seed,  # the kept take's seed when a re-take was kept, else null (the request's seed)
            "format": fmt,
            "audio": base64.b64encode(audio).decode(),
            "codes": result.codes.tolist(),
        },
        headers=headers,
    )
