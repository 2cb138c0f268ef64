"""An asyncio front for one Synthesizer: many concurrent callers, one engine loop on a background thread.

Each `await synthesize(requests)` call's segments, and each `await open_stream(request)`, join the replica's
continuous batch alongside every other caller's, so a Ray Data actor with several batches in flight, or a Serve
replica with many requests, keeps its slots full. The loop thread is the only one that touches the model.
A caller that goes away (cancelled, timed out, stream closed) has its rows dropped from the engine at the next
step: their slots go to other rows instead of finishing audio nobody will read.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .replica import RequestError, SegmentAudio, SynthesisRequest, SynthesisResult, Synthesizer, admission_order

log = logging.getLogger(__name__)


@dataclass
class _Job:
    requests: list[SynthesisRequest]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future | None = None  # whole results (synthesize)
    events: asyncio.Queue | None = None  # (kind, value) events (open_stream)
    id: int = -1
    results: list[SynthesisResult] = field(default_factory=list)
    parts: dict[int, dict[int, tuple]] = field(default_factory=dict)
    remaining: int = 0
    # streaming: pieces of later segments wait until every earlier segment has been sent
    next_segment: int = 0
    held: dict[int, list[np.ndarray]] = field(default_factory=dict)


@dataclass
class _Cancel:
    job: _Job


class SpeechStream:
    """One streamed request: iterate for float32 audio pieces in order; `result` holds codes etc. at the end."""

    def __init__(self, engine: AsyncSynthesizer, job: _Job) -> None:
        self._engine = engine
        self._job = job
        self.result: SynthesisResult | None = None
        self._closed = False

    def __aiter__(self) -> AsyncIterator[np.ndarray]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[np.ndarray]:
        assert self._job.events is not None
        try:
            while True:
                kind, value = await self._job.events.get()
                if kind == "chunk":
                    yield value
                elif kind == "end":
                    self.result = value
                    self._closed = True
                    return
                else:  # "failed": the engine loop died
                    self._closed = True
                    raise RuntimeError(value)
        finally:
            self.close()

    def close(self) -> None:
        """Stop generating this request (no-op once it has finished)."""
        if not self._closed:
            self._closed = True
            self._engine._inbox.put(_Cancel(self._job))


class AsyncSynthesizer:
    def __init__(self, synthesizer: Synthesizer) -> None:
        self.synthesizer = synthesizer
        self._inbox: queue.Queue[_Job | _Cancel | None] = queue.Queue()
        self._jobs: dict[int, _Job] = {}
        self._ids = itertools.count()
        self._thread = threading.Thread(target=self._run, name="raytts-engine", daemon=True)
        self._stopped = False
        self.error: BaseException | None = None
        self._thread.start()

    async def synthesize(self, requests: list[SynthesisRequest]) -> list[SynthesisResult]:
        """Results in input order; a request that cannot be synthesised comes back with `error` set."""
        self._check_alive()
        loop = asyncio.get_running_loop()
        job = _Job(requests=requests, loop=loop, future=loop.create_future())
        self._inbox.put(job)
        try:
            return await asyncio.shield(job.future)
        except asyncio.CancelledError:
            self._inbox.put(_Cancel(job))
            raise

    async def open_stream(self, request: SynthesisRequest) -> SpeechStream:
        """Validate and start one request whose audio arrives in pieces; raises RequestError for a bad request."""
        self._check_alive()
        loop = asyncio.get_running_loop()
        job = _Job(requests=[request], loop=loop, events=asyncio.Queue())
        self._inbox.put(job)
        try:
            kind, value = await job.events.get()
        except asyncio.CancelledError:
            self._inbox.put(_Cancel(job))
            raise
        if kind == "error":
            raise RequestError(value)
        if kind == "failed":
            raise RuntimeError(value)
        return SpeechStream(self, job)

    def stats(self) -> dict[str, Any]:
        """A snapshot of the engine's counters (read from another thread: good enough for monitoring/tests)."""
        batcher = self.synthesizer.batcher
        b, r = batcher.stats, self.synthesizer.stats
        return {
            "slots": self.synthesizer.plan.slots,
            "steps": b.steps,
            "admitted": b.admitted,
            "finished": b.finished,
            "cancelled": b.cancelled,
            "max_concurrent": b.max_concurrent,
            "occupancy": b.occupancy,
            "queued_rows": len(batcher.queue),
            "running_rows": sum(1 for o in batcher.owner if o is not None),
            "open_jobs": len(self._jobs),
            "requests": r.requests,
            "failed": r.failed,
            "segments": r.segments,
            "frames": r.frames,
            "stream_chunks": r.stream_chunks,
        }

    def close(self) -> None:
        self._stopped = True
        self._inbox.put(None)
        self._thread.join(timeout=30)

    def _check_alive(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"the engine loop died: {self.error!r}") from self.error
        if self._stopped:
            raise RuntimeError("this engine was closed (its model was unloaded); send the request again")

    # --------------------------------------------------------------------------------------------- loop thread

    def _run(self) -> None:
        synth = self.synthesizer
        try:
            while not self._stopped:
                self._drain(block=not synth.batcher.busy)
                if synth.batcher.busy:
                    for out in synth.pump():
                        self._deliver(out)
        except BaseException as err:
            log.exception("engine loop failed")
            self.error = err
            for job in self._jobs.values():
                _post(job, "failed", f"the engine loop died: {err!r}")
            self._jobs.clear()
        finally:
            # Unblock callers still waiting when the engine is closed.
            for job in self._jobs.values():
                _post(job, "failed", "the engine was closed while this request was running; send it again")
            self._jobs.clear()

    def _drain(self, block: bool) -> None:
        """Accept every queued message; when the engine is idle, wait (briefly) for the first one."""
        try:
            item = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while item is not None:
            if isinstance(item, _Cancel):
                self._cancel(item.job)
            else:
                self._accept(item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _accept(self, job: _Job) -> None:
        job.results, segments = self.synthesizer.prepare(job.requests)
        job.id = next(self._ids)
        job.remaining = len(segments)
        streaming = job.events is not None
        if streaming:
            if job.results[0].error:
                _post(job, "error", job.results[0].error)
                return
            _post(job, "start", len(segments))
        if not segments:
            self._finish(job)
            return
        self._jobs[job.id] = job
        # A streamed request's segments go in order (its first audio comes from segment 0); others longest first.
        for segment in segments if streaming else admission_order(segments):
            self.synthesizer.submit(segment, (job.id, segment.request, segment.index), stream=streaming)

    def _cancel(self, job: _Job) -> None:
        if self._jobs.pop(job.id, None) is None:
            return
        dropped = self.synthesizer.cancel(lambda key: key[0] == job.id)
        log.debug("cancelled job %d: %d rows dropped", job.id, dropped)

    def _deliver(self, out: SegmentAudio) -> None:
        job_id, row, index = out.key
        job = self._jobs.get(job_id)
        if job is None:
            return
        if job.events is not None:
            self._deliver_piece(job, index, out)
        else:
            job.parts.setdefault(row, {})[index] = (out.audio, out.codes, out.eos)
        if out.done:
            job.remaining -= 1
            if job.remaining == 0:
                del self._jobs[job_id]
                self._finish(job)

    def _deliver_piece(self, job: _Job, index: int, out: SegmentAudio) -> None:
        if out.done:
            job.parts.setdefault(0, {})[index] = (np.zeros(0, np.float32), out.codes, out.eos)
        if index != job.next_segment:
            job.held.setdefault(index, []).append(out.audio)
            return
        if out.audio.size:
            _post(job, "chunk", out.audio)
        # Finishing the current segment releases the pieces later segments produced meanwhile.
        while job.next_segment in job.parts.get(0, {}):
            job.next_segment += 1
            for piece in job.held.pop(job.next_segment, []):
                if piece.size:
                    _post(job, "chunk", piece)

    def _finish(self, job: _Job) -> None:
        self.synthesizer.join(job.results, job.parts)
        if job.events is not None:
            _post(job, "end", job.results[0])
        elif job.future is not None:
            job.loop.call_soon_threadsafe(_resolve, job.future, job.results)


def _post(job: _Job, kind: str, value: object) -> None:
    if job.events is not None:
        job.loop.call_soon_threadsafe(job.events.put_nowait, (kind, value))
    elif job.future is not None and kind == "failed":
        job.loop.call_soon_threadsafe(_fail, job.future, value)


def _resolve(future: asyncio.Future, value: object) -> None:
    if not future.done():
        future.set_result(value)


def _fail(future: asyncio.Future, message: object) -> None:
    if not future.done():
        future.set_exception(RuntimeError(str(message)))
