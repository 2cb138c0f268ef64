"""An asyncio front for one Synthesizer: many concurrent callers, one engine loop on a background thread.

Each `await synthesize(requests)` call's segments, and each `await open_stream(request)`, join the replica's
continuous batch alongside every other caller's, so a Ray Data actor with several batches in flight, or a Serve
replica with many requests, keeps its slots full. The loop thread is the only one that touches the model.
A caller that goes away (cancelled, timed out, stream closed) has its rows dropped from the engine at the next
step: their slots go to other rows instead of finishing audio nobody will read. With a `FrontEndPool`, requests that
arrive as text are normalised, split and tokenised before they reach the engine thread (`actors.front_end_pool`).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .driver import Call, EngineDriver
from .requests import SynthesisRequest, SynthesisResult
from .validation import RequestError

if TYPE_CHECKING:
    from .front_end_pool import FrontEndPool
    from .replica import Synthesizer

log = logging.getLogger(__name__)


@dataclass
class _Job:
    """A caller waiting on the engine thread: its call, and how to reach its event loop."""

    requests: list[SynthesisRequest]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future | None = None  # whole results (synthesize)
    events: asyncio.Queue | None = None  # (kind, value) events (open_stream)
    call: Call | None = None


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
    def __init__(self, synthesizer: Synthesizer, front_ends: FrontEndPool | None = None) -> None:
        self.synthesizer = synthesizer
        self.front_ends = front_ends
        self._inbox: queue.Queue[_Job | _Cancel | None] = queue.Queue()
        self.driver = EngineDriver(synthesizer)
        self._jobs: dict[int, _Job] = {}  # by call id
        self._thread = threading.Thread(target=self._run, name="raytts-engine", daemon=True)
        self._stopped = False
        self.error: BaseException | None = None
        self._thread.start()

    async def _front_ends(self, requests: list[SynthesisRequest]) -> dict[int, str]:
        """Prepare the requests' front ends off the engine thread (with a pool); returns {index: error} of those
        whose text cannot be synthesised."""
        failed: dict[int, str] = {}
        if self.front_ends is None:
            return failed
        for index, request in enumerate(requests):
            try:
                await self.front_ends.prepare(request)
            except RequestError as err:
                failed[index] = str(err)
        return failed

    async def synthesize(self, requests: list[SynthesisRequest]) -> list[SynthesisResult]:
        """Results in input order; a request that cannot be synthesised comes back with `error` set."""
        self._check_alive()
        failed = await self._front_ends(requests)
        if failed:
            todo = [r for i, r in enumerate(requests) if i not in failed]
            done = iter(await self.synthesize(todo) if todo else [])
            return [
                SynthesisResult(
                    id=r.id, text=r.text if isinstance(r.text, str) else "", error=failed[i], error_kind="input"
                )
                if i in failed
                else next(done)
                for i, r in enumerate(requests)
            ]
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
        failed = await self._front_ends([request])
        if failed:
            raise RequestError(failed[0])
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
            "attention_read_efficiency": b.attention_read_efficiency,
            "kv_held_share": b.kv_held_share,
            "held_tokens": b.held_tokens,
            "reserved_tokens": b.reserved_tokens,
            "blocks_total": b.blocks_total,
            "blocks_free": b.blocks_free,
            "block_size": self.synthesizer.plan.block_size,
            "peak_blocks_used": b.peak_blocks_used,
            "preemptions": b.preemptions,
            "recomputed_tokens": b.recomputed_tokens,
            "slot_tokens": self.synthesizer.plan.slot_tokens,
            "queued_rows": batcher.queued_rows,
            "running_rows": batcher.running_rows,
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
        if self.front_ends is not None:
            self.front_ends.close()

    def _check_alive(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"the engine loop died: {self.error!r}") from self.error
        if self._stopped:
            raise RuntimeError("this engine was closed (its model was unloaded); send the request again")

    # --------------------------------------------------------------------------------------------- loop thread

    def _run(self) -> None:
        try:
            while not self._stopped:
                self._drain(block=not self.driver.busy)
                if self.driver.busy:
                    for call in self.driver.step():
                        job = self._jobs.get(call.id)
                        if job is not None:
                            self._deliver(job, call)
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
        streaming = job.events is not None
        call = job.call = self.driver.start(job.requests, stream=streaming)
        if streaming:
            if call.done and call.results[0].error:
                _post(job, "error", call.results[0].error)
                return
            _post(job, "start", call.segments)
        if call.done:
            self._deliver(job, call)
        else:
            self._jobs[call.id] = job

    def _cancel(self, job: _Job) -> None:
        if job.call is None or self._jobs.pop(job.call.id, None) is None:
            return
        dropped = self.driver.cancel(job.call)
        log.debug("cancelled call %d: %d rows dropped", job.call.id, dropped)

    def _deliver(self, job: _Job, call: Call) -> None:
        for piece in call.take_pieces():
            _post(job, "chunk", piece)
        if not call.done:
            return
        self._jobs.pop(call.id, None)
        if job.events is not None:
            _post(job, "end", call.results[0])
        elif job.future is not None:
            job.loop.call_soon_threadsafe(_resolve, job.future, call.results)


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
