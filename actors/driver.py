"""The one engine driver: callers' requests in, each caller's results (and, for streams, audio pieces in order) out.

prepare -> order -> submit -> pump -> join, written once. `Synthesizer.synthesize` drives it on the calling thread;
`AsyncSynthesizer` drives it from its engine thread for many asyncio callers. The driver talks to the engine only
through the small `Engine` protocol, so tests can drive it (and the Ray stage / Serve above it) with a fake engine.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np

from .requests import SynthesisRequest, SynthesisResult


@dataclass
class Segment:
    """One piece of a request the engine generates on its own: request `request`'s `index`-th text segment."""

    request: int
    index: int
    prompt: Any  # actors.engine.prompt.CodePrompt (of the refine-text stage when `refine` is set)
    params: Any  # actors.engine.params.SamplingParams (same)
    refine: Any = None  # the engine's plan for the code stage after refining (actors.replica.Refine), or None


@dataclass
class SegmentAudio:
    """What `Engine.pump` hands back for one segment: all of its audio, or the next piece of a stream."""

    key: object
    audio: np.ndarray  # float32: the whole segment, or (streams) the samples that became final since last time
    codes: np.ndarray | None  # [T, num_vq] once the segment is done
    done: bool  # the segment finished (for a stream: `audio` is its last piece)
    eos: bool = False  # ended by EOS (not by max_new_tokens)
    text: str | None = None  # (done) the segment's text as the refine-text stage rewrote it; None: not refined
    error: str | None = None  # (done) why the segment has no audio, when it failed in the engine


class SegmentPart(NamedTuple):
    """A finished segment as the driver keeps it for `Engine.join`."""

    audio: np.ndarray
    codes: np.ndarray | None  # None: no audio was made (refine-only, or `error`)
    eos: bool
    text: str | None = None
    error: str | None = None


# row -> segment index -> its finished part
Parts = dict[int, dict[int, SegmentPart]]


class Engine(Protocol):
    """What the driver needs from an engine replica (`actors.replica.Synthesizer` is the real one)."""

    @property
    def busy(self) -> bool: ...

    def prepare(self, requests: list[SynthesisRequest]) -> tuple[list[SynthesisResult], list[Segment]]: ...

    def submit(self, segment: Segment, key: object, stream: bool = False) -> None: ...

    def pump(self) -> list[SegmentAudio]: ...

    def cancel(self, keys: Callable[[object], bool]) -> int: ...

    def join(self, results: list[SynthesisResult], parts: Parts) -> None: ...

    def retake(self, request: SynthesisRequest, best: SynthesisResult, attempts: int) -> SynthesisRequest | None:
        """The request again with its next seed, when the best of its `attempts` results should be re-taken (its
        quality policy says so), else None."""
        ...

    def better(self, result: SynthesisResult, than: SynthesisResult) -> bool:
        """Whether `result` is a better take of its row than `than` (the quality policy's score)."""
        ...


def admission_order(segments: list[Segment]) -> list[Segment]:
    """Longest text first (stable): a call's rows finish when its longest row does, so starting the long ones first
    lets the short ones fill the slots around them instead of leaving a long row alone at the end of the call.
    Text length stands in for audio length (speech is ~ proportional to its text). Results do not depend on the
    order: every row has its own seed and slot."""
    return sorted(segments, key=lambda s: len(s.prompt.token_ids), reverse=True)


@dataclass
class Call:
    """One caller's requests in the engine: whole results, or (stream) one request's audio pieces in order."""

    requests: list[SynthesisRequest]
    stream: bool = False
    id: int = -1
    results: list[SynthesisResult] = field(default_factory=list)
    parts: Parts = field(default_factory=dict)
    remaining: int = 0  # segments not finished yet
    done: bool = False  # results are final (or, for a stream refused at the start, results[0].error says why)
    segments: int = 0  # how many segments the call was split into
    pieces: list[np.ndarray] = field(default_factory=list)  # stream audio ready for the caller, in order
    # streaming: pieces of later segments wait until every earlier segment has been sent
    next_segment: int = 0
    held: dict[int, list[np.ndarray]] = field(default_factory=dict)
    # re-takes (quality on_fail: retake): rows in the round now running, attempts per row, the best take so far
    retaking: list[int] = field(default_factory=list)
    attempts: dict[int, int] = field(default_factory=dict)
    best: dict[int, SynthesisResult] = field(default_factory=dict)

    def take_pieces(self) -> list[np.ndarray]:
        pieces, self.pieces = self.pieces, []
        return pieces


class EngineDriver:
    """Runs calls through one engine. Not thread-safe: one thread drives it (the caller's, or the engine thread)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.calls: dict[int, Call] = {}
        self._ids = itertools.count()

    @property
    def busy(self) -> bool:
        return self.engine.busy

    def start(self, requests: list[SynthesisRequest], stream: bool = False) -> Call:
        """Validate and queue a call. A stream is one request whose segments go in order (its first audio comes from
        segment 0); other calls go longest first. A stream whose request is refused is done at once with the error."""
        call = Call(requests=requests, stream=stream, id=next(self._ids))
        call.results, segments = self.engine.prepare(requests)
        call.remaining = call.segments = len(segments)
        if stream and call.results[0].error:
            call.done = True
            return call
        if not segments:
            self._finish(call)
            return call
        self.calls[call.id] = call
        for segment in segments if stream else admission_order(segments):
            self.engine.submit(segment, (call.id, segment.request, segment.index), stream=stream)
        return call

    def cancel(self, call: Call) -> int:
        """Drop a call's queued and running segments (its caller went away); returns how many rows were dropped."""
        if self.calls.pop(call.id, None) is None:
            return 0
        return self.engine.cancel(lambda key: key[0] == call.id)

    def step(self) -> list[Call]:
        """One engine step; the calls that got news (stream pieces, or their final results)."""
        touched: dict[int, Call] = {}
        for out in self.engine.pump():
            call_id, row, index = out.key
            call = self.calls.get(call_id)
            if call is None:
                continue
            touched[call_id] = call
            if call.stream:
                self._stream_piece(call, index, out)
            else:
                call.parts.setdefault(row, {})[index] = SegmentPart(out.audio, out.codes, out.eos, out.text, out.error)
            if out.done:
                call.remaining -= 1
                if call.remaining == 0:
                    del self.calls[call_id]
                    self._finish(call)
        return list(touched.values())

    def run(self, requests: list[SynthesisRequest]) -> list[SynthesisResult]:
        """A whole call on this thread: results in input order, failures with `error` set."""
        call = self.start(requests)
        while not call.done:
            self.step()
        return call.results

    def _stream_piece(self, call: Call, index: int, out: SegmentAudio) -> None:
        if out.done:
            call.parts.setdefault(0, {})[index] = SegmentPart(
                np.zeros(0, np.float32), out.codes, out.eos, out.text, out.error
            )
        if index != call.next_segment:
            call.held.setdefault(index, []).append(out.audio)
            return
        if out.audio.size:
            call.pieces.append(out.audio)
        # Finishing the current segment releases the pieces later segments produced meanwhile.
        while call.next_segment in call.parts.get(0, {}):
            call.next_segment += 1
            call.pieces.extend(piece for piece in call.held.pop(call.next_segment, []) if piece.size)

    def _finish(self, call: Call) -> None:
        if call.retaking:  # a re-take round: join only its rows (each attempt counts once in the engine's stats)
            rows = call.retaking
            self.engine.join(
                [call.results[r] for r in rows], {i: call.parts[r] for i, r in enumerate(rows) if r in call.parts}
            )
        else:
            self.engine.join(call.results, call.parts)
        if not call.stream and self._retake(call):
            return
        for row, attempts in call.attempts.items():
            call.results[row].attempts = attempts
        call.done = True

    def _retake(self, call: Call) -> bool:
        """Keep each joined row's best take; queue the next seed of the rows whose best take should be re-taken.
        True when a round was queued (the call goes on)."""
        rows = call.retaking or list(range(len(call.results)))
        queued: list[int] = []
        for row in rows:
            result, best = call.results[row], call.best.get(row)
            if best is None or self.engine.better(result, best):
                call.best[row] = best = result
            call.results[row] = best
            attempts = call.attempts.get(row, 1)
            request = self.engine.retake(call.requests[row], best, attempts)
            if request is None:
                continue
            results, segments = self.engine.prepare([request])
            if results[0].error:
                continue  # it was accepted once: a refusal now keeps the best take
            results[0].seed, call.attempts[row] = request.params.seed, attempts + 1
            call.results[row] = results[0]
            call.parts.pop(row, None)
            for segment in segments:
                segment.request = row
                self.engine.submit(segment, (call.id, row, segment.index))
            call.remaining += len(segments)
            queued.append(row)
        call.retaking = queued
        if not queued:
            return False
        self.calls[call.id] = call
        return True
