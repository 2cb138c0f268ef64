"""An asyncio front for one Synthesizer: many concurrent callers, one engine loop on a background thread.

Each `await synthesize(requests)` call's segments join the replica's continuous batch alongside every other
call's, so a Ray Data actor with several batches in flight, or a Serve replica with many requests, keeps its
slots full. The loop thread is the only one that touches the model.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
from dataclasses import dataclass, field

from .replica import SynthesisRequest, SynthesisResult, Synthesizer

log = logging.getLogger(__name__)


@dataclass
class _Job:
    requests: list[SynthesisRequest]
    results: list[SynthesisResult] = field(default_factory=list)
    parts: dict[int, dict[int, tuple]] = field(default_factory=dict)
    remaining: int = 0
    future: asyncio.Future | None = None
    loop: asyncio.AbstractEventLoop | None = None


class AsyncSynthesizer:
    def __init__(self, synthesizer: Synthesizer) -> None:
        self.synthesizer = synthesizer
        self._inbox: queue.Queue[_Job | None] = queue.Queue()
        self._jobs: dict[int, _Job] = {}
        self._ids = itertools.count()
        self._thread = threading.Thread(target=self._run, name="raytts-engine", daemon=True)
        self._stopped = False
        self.error: BaseException | None = None
        self._thread.start()

    async def synthesize(self, requests: list[SynthesisRequest]) -> list[SynthesisResult]:
        if self.error is not None:
            raise RuntimeError(f"the engine loop died: {self.error!r}") from self.error
        loop = asyncio.get_running_loop()
        job = _Job(requests=requests, future=loop.create_future(), loop=loop)
        self._inbox.put(job)
        return await job.future

    def close(self) -> None:
        self._stopped = True
        self._inbox.put(None)
        self._thread.join(timeout=30)

    # --------------------------------------------------------------------------------------------- loop thread

    def _run(self) -> None:
        synth = self.synthesizer
        try:
            while not self._stopped:
                self._drain(block=not synth.batcher.busy)
                if synth.batcher.busy:
                    for (job_id, row, index), audio, codes, finished in synth.pump():
                        self._deliver(job_id, row, index, (audio, codes, finished))
        except BaseException as err:
            log.exception("engine loop failed")
            self.error = err
            for job in self._jobs.values():
                if job.future is not None and job.loop is not None:
                    job.loop.call_soon_threadsafe(_fail, job.future, err)
            self._jobs.clear()

    def _drain(self, block: bool) -> None:
        """Accept every queued job; when the engine is idle, wait (briefly) for the first one."""
        try:
            item = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while item is not None:
            self._accept(item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _accept(self, job: _Job) -> None:
        job.results, segments = self.synthesizer.prepare(job.requests)
        job_id = next(self._ids)
        job.remaining = len(segments)
        if not segments:
            self._finish(job)
            return
        self._jobs[job_id] = job
        for segment in segments:
            self.synthesizer.submit(segment, (job_id, segment.request, segment.index))

    def _deliver(self, job_id: int, row: int, index: int, part: tuple) -> None:
        job = self._jobs[job_id]
        job.parts.setdefault(row, {})[index] = part
        job.remaining -= 1
        if job.remaining == 0:
            del self._jobs[job_id]
            self._finish(job)

    def _finish(self, job: _Job) -> None:
        self.synthesizer.join(job.results, job.parts)
        if job.future is not None and job.loop is not None:
            job.loop.call_soon_threadsafe(_resolve, job.future, job.results)


def _resolve(future: asyncio.Future, value: object) -> None:
    if not future.done():
        future.set_result(value)


def _fail(future: asyncio.Future, error: BaseException) -> None:
    if not future.done():
        future.set_exception(RuntimeError(f"the engine loop died: {error!r}"))
