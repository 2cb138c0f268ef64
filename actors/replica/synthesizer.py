"""The replica's face: `Synthesizer`, the `actors.driver.Engine` the one driver runs for `synthesize` and for
`AsyncSynthesizer`. It wires the rooms together: `build` (load, plan, compile), `inputs` (requests into segments),
`refine` (the refine-text stage's two-stage rows), `outputs` (decode, streams, join)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..driver import EngineDriver, Parts, Segment, SegmentAudio
from ..engine.batcher import ContinuousBatcher
from ..engine.memory import decode_bytes_per_mel_frame
from ..engine.params import SamplingParams
from ..engine.prompt import CodePrompt
from ..requests import SynthesisRequest, SynthesisResult
from ..settings import EngineSettings
from ..speaker import SpeakerError
from ..validation import RequestError
from ..voices import MAX_REFERENCE_SECONDS, encode_reference
from . import build, inputs
from .outputs import Outputs, ReplicaStats, join
from .refine import RefineStage, Refining

log = logging.getLogger(__name__)


class Synthesizer:
    """A frozen model replica with its tokenizer. Not thread-safe: one caller at a time."""

    def __init__(
        self,
        model: str | Path | None = "tiny",
        engine: EngineSettings | None = None,
        *,
        max_new_tokens: int = SamplingParams.max_new_tokens,
        max_chars: int = 10_000,
        device_share: float = 1.0,
        cache_dir: Path | None = None,
        max_reference_seconds: float = MAX_REFERENCE_SECONDS,
        **settings: Any,
    ) -> None:
        """`engine`: the replica's settings (`actors.settings.EngineSettings`, the one definition of each), or give
        its fields as keywords (`Synthesizer("tiny", device="cpu", max_slots=8)`). `max_new_tokens`: new tokens a slot
        reserves unless `engine.max_new_tokens` says; `max_chars`: longest text accepted; `device_share` (0, 1]: the
        part of the device this replica may use when several share it (fractional Ray GPUs, several models in one
        Serve replica), which scales the default budget."""
        if engine is not None and settings:
            raise ValueError(f"give either engine= or its fields as keywords, not both ({sorted(settings)})")
        engine = engine or EngineSettings(**settings)
        if not 0 < device_share <= 1:
            raise ValueError(f"device_share must be in (0, 1], got {device_share}")
        self.engine = engine
        self.backend = engine.backend
        loaded = build.load(model, engine, cache_dir)
        self.checkpoint, self.config, self.tokenizer = loaded.checkpoint, loaded.config, loaded.tokenizer
        self.model, self.device, self.dtype = loaded.model, loaded.device, loaded.dtype
        self.max_chars = max_chars
        self.max_segment_tokens = engine.max_segment_tokens
        self.max_reference_seconds = max_reference_seconds
        self.plan, budget = build.plan_memory(loaded, engine, engine.max_new_tokens or max_new_tokens, device_share)
        self.budget_bytes, self.budget_source = budget.bytes, budget.source
        check_every = 1 if self.device.type == "cpu" else 8
        self.batcher = ContinuousBatcher(self.model, self.plan, self.tokenizer.spk_emb_id, check_every,
                                         engine.compile, text_eos_id=self.tokenizer.eos_id)  # fmt: skip
        self.stats = ReplicaStats()
        self.refine = RefineStage(self.batcher, self.tokenizer, self.plan, self.stats)
        frame_bytes = decode_bytes_per_mel_frame(self.config, self.dtype)
        self.outputs = Outputs(self.model, self.plan, engine.decoder == "hidden", engine.stream_chunk_steps,
                               frame_bytes, self.stats)  # fmt: skip
        if engine.compile != "off":
            build.warm_up(self.batcher)
        self._log_ready(budget.capped)

    def _log_ready(self, capped: str) -> None:
        plan = self.plan
        log.info(
            "replica ready: model %s (%s) on %s/%s (backend %s), decoder=%s, up to %d rows in flight of at most %d "
            "tokens, KV pool %d blocks x %d tokens (%d full rows; rows take blocks as they grow) (%.0f MiB of a "
            "%.0f MiB budget: %s%s)",
            self.checkpoint.source, self.config.name, self.device, str(self.dtype).removeprefix("torch."),
            "torch" if self.backend == "torch" else f"onnx, {self.model.quantize} quantisation", self.engine.decoder,
            plan.slots, plan.slot_tokens, plan.pool_blocks, plan.block_size, plan.pool_blocks // plan.row_blocks,
            plan.planned_bytes / 2**20, self.budget_bytes / 2**20, self.budget_source, capped,
        )  # fmt: skip

    def encode_reference(self, audio: np.ndarray, sample_rate: int) -> torch.Tensor:
        """Reference speech (any rate, mono or [samples, channels]) -> DVAE prompt codes [num_vq, P]."""
        return encode_reference(self.model.dvae, self.device, audio, sample_rate, self.max_reference_seconds)

    # ---------------------------------------------------------------------------------------------- synthesis

    def synthesize(self, requests: list[SynthesisRequest]) -> list[SynthesisResult]:
        """Synthesise every request; failures come back as results with `error` set, in input order.

        Drives the engine on the calling thread; for many concurrent callers use `AsyncSynthesizer`.
        """
        return EngineDriver(self).run(requests)

    def prepare(self, requests: list[SynthesisRequest]) -> tuple[list[SynthesisResult], list[Segment]]:
        """Validate and segment requests: a result per request (errors filled in) and the segments to run."""
        results = [
            SynthesisResult(id=r.id, text=r.text if isinstance(r.text, str) else "", quality_policy=r.quality)
            for r in requests
        ]
        segments: list[Segment] = []
        for row, request in enumerate(requests):
            try:
                segments.extend(inputs.segments(self, row, request, results[row]))
            except (RequestError, SpeakerError, ValueError) as err:
                results[row].error, results[row].error_kind = str(err), "input"
                results[row].spoken_text = results[row].dropped = results[row].notes = None
        return results, segments

    def submit(self, segment: Segment, key: object, stream: bool = False) -> None:
        """Queue a segment. A streamed segment comes back from `pump` in pieces as its frames are generated (after
        its refine-text stage, when it has one)."""
        if segment.refine is not None:
            self.refine.submit(key, segment, stream)
            return
        self._start_code_row(key, segment.prompt, segment.params, stream)

    def _start_code_row(self, key: object, prompt: CodePrompt, params: SamplingParams, stream: bool) -> None:
        if stream:
            self.outputs.open_stream(key)
        self.batcher.submit(key, prompt, params, stream=stream)

    def cancel(self, keys: Callable[[object], bool]) -> int:
        """Forget every queued or running segment whose key matches (a caller that went away)."""
        self.outputs.cancel(keys)
        self.refine.cancel(keys)
        return self.batcher.cancel(lambda k: keys(k.key) if isinstance(k, Refining) else keys(k))

    def pump(self) -> list[SegmentAudio]:
        """One engine step: every segment that finished in it, and new audio of streamed segments."""
        started = time.perf_counter()
        finished = self.batcher.step()
        self.stats.generate_s += time.perf_counter() - started
        out: list[SegmentAudio] = []
        refined = [row for row in finished if isinstance(row.key, Refining)]
        if refined:
            out.extend(self.refine.finish(refined, self._start_code_row))
        # Finished rows and progress are views into their slots: decode them before the next step refills them.
        out.extend(self.outputs.progress(self.batcher.progress))
        code_rows = [row for row in finished if not isinstance(row.key, Refining)]
        out.extend(self.outputs.finished(code_rows, self.refine.refined))
        return out

    @property
    def busy(self) -> bool:
        return self.batcher.busy

    def retake(self, request: SynthesisRequest, best: SynthesisResult, attempts: int) -> SynthesisRequest | None:
        """The request with its next seed when the quality policy re-takes flagged rows and attempts are left."""
        policy = request.quality or self.engine.quality.policy()
        if policy.on_fail != "retake" or not best.ok or not best.quality_flags or attempts >= policy.max_attempts:
            return None
        params = replace(request.params, seed=(request.params.seed + attempts) % 2**63)
        return replace(request, params=params)

    def better(self, result: SynthesisResult, than: SynthesisResult) -> bool:
        policy = result.quality_policy or self.engine.quality.policy()
        mine = policy.score(result.quality, result.quality_flags) if result.ok else (math.inf,)
        theirs = policy.score(than.quality, than.quality_flags) if than.ok else (math.inf,)
        return mine < theirs

    def join(self, results: list[SynthesisResult], parts: Parts) -> None:
        """Concatenate each request's segments in order into its result."""
        join(results, parts, self.stats, self.engine.quality.policy())
