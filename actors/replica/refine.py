"""Upstream's refine-text stage inside a replica, as one class: a segment first runs as a text row in the same
batcher (`[Sbreak]{text}[Pbreak]{refine prompt}`, text head, until [Ebreak]); when it finishes, its tokens below
[break_0] are decoded (and re-encoded, as upstream does) into the code stage's prompt and the segment goes on as a
code row, in the same memory budget and decode steps as every other row."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..driver import Segment, SegmentAudio
from ..engine.batcher import ContinuousBatcher, FinishedRow
from ..engine.memory import SlotPlan
from ..engine.params import SamplingParams
from ..engine.prompt import CodePrompt
from ..requests import SynthesisRequest
from ..text import CONTROL_TAG, clean_text, decorate, refine_prompt
from ..tokenizer import TextTokenizer
from ..validation import RequestError

if TYPE_CHECKING:
    from .outputs import ReplicaStats

log = logging.getLogger(__name__)

_SEGMENT_SEED_STEP = 0x9E3779B97F4A7C15


def segment_seed(seed: int, index: int) -> int:
    """Segment `index`'s seed of a row seeded `seed` (segment 0 keeps the row's seed)."""
    return seed if index == 0 else (seed ^ (index * _SEGMENT_SEED_STEP)) % 2**63


@dataclass
class Refine:
    """A segment's code stage, waiting for its refine-text stage to finish: what its code prompt is built from."""

    source: str  # the segment's text before refining (spoken if the refine stage returns no text)
    prompt: str  # the code stage's control tags
    transcript: str  # the reference transcript placed before them
    speaker: torch.Tensor | None
    reference: torch.Tensor | None
    params: SamplingParams  # the code stage's
    only: bool  # refine only: the refined text is the result, no audio


@dataclass(frozen=True)
class Refining:
    """The batcher key of a segment's refine-text row."""

    key: object


# Starts a segment's code row: (key, prompt, params, stream).
StartCodeRow = Callable[[object, CodePrompt, SamplingParams, bool], None]


class RefineStage:
    def __init__(
        self, batcher: ContinuousBatcher, tokenizer: TextTokenizer, plan: SlotPlan, stats: ReplicaStats
    ) -> None:
        self.batcher, self.tokenizer, self.plan, self.stats = batcher, tokenizer, plan, stats
        self._waiting: dict[object, tuple[Refine, bool]] = {}  # key -> its code stage, streamed
        self._refined: dict[object, str] = {}  # key -> refined text, for code rows that were refined

    def segment(
        self, row: int, index: int, request: SynthesisRequest, text: str, speaker: torch.Tensor | None,
        reference: torch.Tensor | None,
    ) -> Segment:  # fmt: skip
        """A segment that starts as a refine-text row, with the refine stage's own sampling and seed (per segment,
        like the code stage's); raises RequestError when the replica's rows leave no room for the refined text."""
        refine = request.refine
        prompt = CodePrompt(self.tokenizer.encode(refine_prompt(text, refine.prompt)))
        transcript = clean_text(request.reference_text, request.normalize) if request.reference_text else ""
        # The refined text becomes the code prompt: it may take what the prompt room leaves after the decoration,
        # the transcript and the reference codes (and fits the slot as a refine row too).
        decoration = self.tokenizer.count(decorate("", request.prompt, speaker is not None, transcript))
        references = 0 if reference is None else int(reference.shape[1])
        room = min(
            self.plan.max_new_tokens,
            self.plan.slot_tokens - prompt.length,
            self.plan.slot_tokens - self.plan.max_new_tokens - decoration - references,
        )
        if room < 1:
            raise RequestError(
                f"the code prompt's decoration, transcript and reference codes ({decoration + references} tokens) "
                f"leave no room for the refined text in this replica's prompt tokens: use a shorter reference, or "
                f"turn refine off"
            )
        params = refine.params(request.params.seed, room)
        params = replace(params, seed=segment_seed(params.seed, index))
        if params.max_new_tokens > room:
            raise RequestError(
                f"refine max_new_tokens {params.max_new_tokens} exceeds the {room} this replica's rows hold for "
                f"refined text (prompt tokens left after the decoration and reference, and the slot); lower it"
            )
        code_params = replace(request.params, seed=segment_seed(request.params.seed, index))
        plan = Refine(text, request.prompt, transcript, speaker, reference, code_params, refine.only)
        return Segment(row, index, prompt, params, plan)

    def submit(self, key: object, segment: Segment, stream: bool) -> None:
        self._waiting[key] = (segment.refine, stream)
        self.batcher.submit(Refining(key), segment.prompt, segment.params, text=True)

    def refined(self, key: object) -> str | None:
        """The refined text of a code row that was refined (once, when it ends), else None."""
        return self._refined.pop(key, None)

    def cancel(self, keys: Callable[[object], bool]) -> None:
        for held in (self._waiting, self._refined):
            for key in [k for k in held if keys(k)]:
                del held[key]

    def finish(self, rows: list[FinishedRow], start_code_row: StartCodeRow) -> list[SegmentAudio]:
        """Refine-text rows that ended in a step: each segment goes on to its code stage (`start_code_row`), or is
        done when it was refine-only. One device-to-host copy for all of their tokens."""
        out: list[SegmentAudio] = []
        lengths = [int(row.codes.shape[0]) for row in rows]
        tokens = torch.cat([row.codes[:, 0] for row in rows]).tolist()
        start = 0
        for row, n in zip(rows, lengths, strict=True):
            out.extend(self._code_stage(row.key.key, tokens[start : start + n], row.finished, start_code_row))
            start += n
        return out

    def _code_stage(
        self, key: object, tokens: list[int], ended: bool, start_code_row: StartCodeRow
    ) -> list[SegmentAudio]:
        """Keep the tokens below [break_0], decode them (re-encoding canonicalises the WordPiece tokens, as upstream's
        decode -> encode does), and start the segment's code row with that text (no second normalisation, as
        upstream). Refine-only segments are done here."""
        plan, stream = self._waiting.pop(key)
        self.stats.refined_segments += 1
        self.stats.refined_tokens += len(tokens)
        text = self.tokenizer.decode([t for t in tokens if t < self.tokenizer.break_0_id]).strip()
        if not CONTROL_TAG.sub("", text).strip(" ，。、,."):
            # Upstream regenerates the whole batch when a row's first token is [Ebreak] (ensure_non_empty, unseeded
            # only); rows here have their own seeded streams, so the segment is spoken as it was before refining.
            self.stats.refine_fallbacks += 1
            text = plan.source
        if plan.only:
            return [SegmentAudio(key, np.zeros(0, np.float32), None, True, ended, text)]
        room = self.plan.slot_tokens - self.plan.max_new_tokens
        ids = self.tokenizer.encode(decorate(text, plan.prompt, plan.speaker is not None, plan.transcript))
        if len(ids) + (0 if plan.reference is None else int(plan.reference.shape[1])) > room:
            # Refinement is capped to the prompt room, but decode -> encode can grow it (an `[unused3]` token reads
            # back as four): the segment is spoken unrefined, as `spoken_text` then says.
            log.warning("a refined segment re-encoded to %d prompt tokens, over the replica's %d: spoken unrefined",
                        len(ids), room)  # fmt: skip
            self.stats.refine_fallbacks += 1
            text = plan.source
            ids = self.tokenizer.encode(decorate(text, plan.prompt, plan.speaker is not None, plan.transcript))
        self._refined[key] = text
        start_code_row(key, CodePrompt(ids, plan.speaker, plan.reference), plan.params, stream)
        return []
