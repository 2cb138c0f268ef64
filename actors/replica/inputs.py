"""A request's way into a replica: validation (every problem is that request's `error`, raised as RequestError),
its voice (speaker vector or reference codes), its text front end (unless a CPU stage or a front-end pool already
made it), and its segments: code rows, or refine-text rows first (`refine.RefineStage`)."""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol

from ..driver import Segment
from ..engine.memory import SlotPlan
from ..engine.prompt import CodePrompt
from ..model.config import ModelConfig
from ..requests import SynthesisRequest, SynthesisResult
from ..settings import EngineSettings
from ..speaker import normalized_speaker, parse_speaker
from ..text import CONTROL_TAGS, clean_text, decorate, text_front_end
from ..tokenizer import TextTokenizer
from ..validation import RequestError
from .refine import RefineStage, segment_seed


class Replica(Protocol):
    """What segmenting needs of a replica (`Synthesizer` is the one)."""

    config: ModelConfig
    tokenizer: TextTokenizer
    plan: SlotPlan
    engine: EngineSettings
    max_chars: int
    refine: RefineStage


def segments(replica: Replica, row: int, request: SynthesisRequest, result: SynthesisResult) -> list[Segment]:
    """The request's segments; fills the result's spoken text and dropped characters."""
    if request.front_end is None and not isinstance(request.text, str):
        raise RequestError(f"text must be a string, got {type(request.text).__name__}")
    gpt = replica.config.gpt
    request.params.validate(gpt.num_vq)
    if not CONTROL_TAGS.fullmatch(request.prompt or ""):
        raise RequestError(f"prompt must be a run of control tags such as [speed_5], got {request.prompt!r:.60}")
    speaker = parse_speaker(request.speaker, gpt.hidden_size)
    speaker = None if speaker is None else normalized_speaker(speaker)
    reference = request.reference_codes
    if reference is not None and (reference.ndim != 2 or reference.shape[0] != gpt.num_vq):
        raise RequestError(f"reference codes must be [{gpt.num_vq}, T], got {tuple(reference.shape)}")
    front_end = request.front_end or text_front_end(
        request.text,
        replica.tokenizer,
        prompt=request.prompt,
        has_speaker=speaker is not None,
        reference_text=request.reference_text,
        normalize=request.normalize,
        max_segment_tokens=replica.engine.max_segment_tokens,
        max_chars=replica.max_chars,
        strict=request.strict,
        reading=request.reading,
    )
    result.spoken_text, result.dropped, result.notes = front_end.spoken_text, front_end.dropped, front_end.notes
    plan = replica.plan
    if request.params.max_new_tokens > plan.max_new_tokens:
        raise RequestError(
            f"max_new_tokens {request.params.max_new_tokens} exceeds this replica's {plan.max_new_tokens}; lower it "
            f"or start the replica with a larger max_new_tokens"
        )
    refine = request.refine
    if refine.enabled and not CONTROL_TAGS.fullmatch(refine.prompt or ""):
        raise RequestError(f"refine prompt must be a run of control tags such as [oral_2], got {refine.prompt!r:.60}")
    if refine.enabled and len(front_end.segments) != len(front_end.segment_ids):
        raise RequestError("the refine-text stage needs each segment's text; this is a raytts bug, please report it")
    out = []
    for index, ids in enumerate(front_end.segment_ids):
        if refine.enabled:
            out.append(replica.refine.segment(row, index, request, front_end.segments[index], speaker, reference))
            continue
        prompt = CodePrompt(ids, speaker, reference)
        prompt_room = plan.slot_tokens - plan.max_new_tokens
        if prompt.length > prompt_room:
            transcript = clean_text(request.reference_text, request.normalize) if request.reference_text else ""
            overhead = replica.tokenizer.count(decorate("", request.prompt, speaker is not None, transcript))
            raise RequestError(
                f"prompt of {prompt.length} tokens ({overhead} of them decoration and transcript, plus the reference "
                f"codes) exceeds this replica's {prompt_room} prompt tokens: use a shorter reference clip or "
                f"transcript, or raise max_prompt_tokens"
            )
        out.append(Segment(row, index, prompt, replace(request.params, seed=segment_seed(request.params.seed, index))))
    return out
