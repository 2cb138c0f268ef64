"""The Ray Data GPU stage: one engine replica per actor, rows in, raw audio out.

`__init__` loads and warms the replica; `__call__` only converts columns, resolves voices (`actors.voices`) and
awaits the shared async engine, so batches that are in flight together (`max_concurrent_batches`) share its
continuous batch. Rows that failed upstream (read errors, duplicates) pass through with their error; every row
returns. Encoding and storing audio are the next, CPU-only stage of the job (`pipeline.store`). The stage knows
nothing of the job config: `pipeline` hands it a `StageSettings`; the columns that identify a row across runs
(`IDENTITY_COLUMNS`, the job's books) pass through as they are.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import time
from typing import Any

import pyarrow as pa
from pydantic import Field

from .audio import pcm16_flat
from .quality import arrow_type as quality_arrow_type
from .requests import with_source
from .settings import ActorFields, EngineSettings, RefineSettings, RowTextFields, SamplingSettings, Strict
from .validation import RequestError

log = logging.getLogger(__name__)


class StageSettings(Strict, RowTextFields, ActorFields):
    """What one engine actor of the offline job needs to know (built by `pipeline.graph` from the job config, whose
    text and actor fields are these same definitions)."""

    model: str = Field(description="Checkpoint folder, URI, hf://2Noise/ChatTTS[@rev], or 'tiny'.")
    engine: EngineSettings = Field(default_factory=EngineSettings)
    sampling: SamplingSettings = Field(default_factory=SamplingSettings)
    refine: RefineSettings = Field(default_factory=RefineSettings, description="The refine-text stage's defaults.")
    save_codes: bool = Field(False, description="Keep the [T, 4] codes column.")


# The replica's engine accounting when a row's batch finished (`BatcherStats.accounting`, cumulative per actor):
# the job report keeps each worker's latest (most steps).
ENGINE_ACCOUNTING = pa.struct(
    [
        ("steps", pa.int64()),
        ("max_rows_in_flight", pa.int64()),
        ("occupancy", pa.float64()),
        ("attention_read_efficiency", pa.float64()),
        ("kv_held_share", pa.float64()),
        ("blocks_total", pa.int64()),
        ("blocks_free", pa.int64()),
        ("peak_blocks_used", pa.int64()),
        ("preemptions", pa.int64()),
        ("recomputed_tokens", pa.int64()),
    ]
)

# What the GPU stage hands to the store stage: raw PCM, never encoded on the GPU actor.
STAGE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.string()),
        ("source", pa.string()),
        ("speaker", pa.string()),
        ("seed", pa.int64()),
        ("pcm", pa.list_(pa.int16())),  # 16-bit like the encoded files: half the bytes between stages
        ("segments", pa.int32()),
        ("truncated_segments", pa.int32()),
        ("codes", pa.list_(pa.list_(pa.int16()))),
        ("error", pa.string()),
        ("error_kind", pa.string()),  # actors.rows.ERROR_KINDS
        ("spoken_text", pa.string()),  # the text the model was asked to say (actors.text.FrontEnd)
        ("dropped_chars", pa.string()),  # characters the front end deleted ("" when none)
        ("reading_notes", pa.string()),  # what the reading replaced or had to guess ("" when nothing)
        ("qc", quality_arrow_type()),  # the row's quality measures (`actors.quality`)
        ("qc_flags", pa.list_(pa.string())),  # the flags they raised
        ("qc_attempts", pa.int32()),  # takes made of the row (quality on_fail: retake)
        ("worker", pa.string()),
        ("engine_occupancy", pa.float64()),
        ("engine", ENGINE_ACCOUNTING),
        ("model", pa.string()),  # the checkpoint as given plus its digest (`ResolvedCheckpoint.model_id`)
        ("key", pa.string()),
        ("input_digest", pa.string()),
    ]
)
IDENTITY_COLUMNS = ("key", "input_digest")  # the job's books' columns, passed through untouched


class TTSStage:
    def __init__(self, settings: dict[str, Any], speakers: dict[str, dict[str, Any]]) -> None:
        started = time.perf_counter()
        import torch

        from .rows import RowDefaults
        from .voices import RowVoices

        self.settings = StageSettings.model_validate(settings)
        torch.set_num_threads(self.settings.engine.threads or max(1, int(self.settings.num_cpus) or 1))
        self._build_engine()
        self._rebuilding = asyncio.Lock()
        self.rebuilds = 0
        self.voices = RowVoices(self.settings.speaker, speakers)  # a row's own reference_audio is refused here
        self.defaults = RowDefaults(
            sampling=self.settings.sampling.params(), speaker=self.settings.speaker,
            normalize=self.settings.normalize, strict=self.settings.strict_text,
            refine=self.settings.refine.options(), refine_only_allowed=False,
            reading=self.settings.reading(),
        )  # fmt: skip
        self.worker = f"{_node_id()[:12]}/{os.getpid()}"
        self.model_id = self.synthesizer.checkpoint.model_id  # hashes the files once per actor
        slots, fed = self.synthesizer.plan.slots, self.settings.batch_size * self.settings.max_concurrent_batches
        if fed < slots:
            log.warning(
                "TTS stage %s: the engine has %d slots but at most %d rows reach it at once (actors.batch_size %d x "
                "actors.max_concurrent_batches %d), so at least %d slots stay idle; raise either so that their "
                "product is >= 1.5x the slots",
                self.worker, slots, fed, self.settings.batch_size, self.settings.max_concurrent_batches, slots - fed,
            )  # fmt: skip
        log.info("TTS stage %s ready in %.1f s", self.worker, time.perf_counter() - started)

    def _build_engine(self) -> None:
        from .async_engine import AsyncSynthesizer
        from .placement import assigned_gpu_share
        from .replica import build_synthesizer
        from .replica.standin import StandInSynthesizer, rows_per_s_from_env

        standin = rows_per_s_from_env()
        if standin is not None:  # benchmarks of the CPU stages only (`actors.replica.standin`)
            log.warning("TTS stage: the stand-in engine at %g rows/s, no model: its audio is not speech", standin)
            self.synthesizer = StandInSynthesizer(
                self.settings.model, standin, engine=self.settings.engine, max_chars=self.settings.max_chars
            )
            self.engine = AsyncSynthesizer(self.synthesizer)
            return
        self.synthesizer = build_synthesizer(
            self.settings.model,
            self.settings.engine,
            max_new_tokens=self.settings.sampling.max_new_tokens,
            refine=self.settings.refine,
            max_chars=self.settings.max_chars,
            device_share=assigned_gpu_share(),  # actors.num_gpus as Ray gave it, as for Serve replicas
        )
        self.engine = AsyncSynthesizer(self.synthesizer)

    async def _synthesize(self, requests: list) -> list:
        """The engine's results; if its loop dies (a bug, a device error) the rows in flight fail with the reason,
        the engine is rebuilt once, and the job goes on: one bad step must not kill a million-row job."""
        from .requests import SynthesisResult

        async with self._rebuilding:  # a call arriving during a rebuild waits for the new engine
            engine = self.engine
        try:
            return await engine.synthesize(requests)
        except RuntimeError:
            if engine.error is None:
                raise  # not the engine loop: let Ray Data report it
            cause = repr(engine.error)
            async with self._rebuilding:
                if self.engine is engine:  # the first call to get here rebuilds; the others find it done
                    log.error("TTS stage %s: the engine loop died (%s); rebuilding it", self.worker, cause)
                    engine.close()
                    # Let go of the old model and cache before loading the new one (the error's frames hold them).
                    engine.error.__traceback__ = None
                    engine.synthesizer = self.synthesizer = self.engine = None
                    gc.collect()
                    _release_device_cache()
                    await asyncio.to_thread(self._build_engine)
                    self.rebuilds += 1
            message = (
                f"the engine failed while this row was being synthesised ({cause}), and with it every row in "
                f"flight on {self.worker}; the engine was rebuilt and the job went on. Re-run with retry_failed: "
                f"true to redo these rows"
            )
            return [SynthesisResult(id=r.id, text=r.text, error=message, error_kind="engine") for r in requests]

    async def __call__(self, table: pa.Table) -> pa.Table:
        from .text import FrontEnd

        batch = {name: table.column(name).to_pylist() for name in ("id", "text", "source", "fields", "error")}
        columns = ("segment_ids", "spoken_text", "dropped_chars", "segment_texts", "reading_notes")
        front_ends = [
            None if ids is None else FrontEnd(ids, spoken or "", dropped or "", texts or [], notes or "")
            for ids, spoken, dropped, texts, notes in zip(*(table.column(c).to_pylist() for c in columns), strict=True)
        ]
        results, requests, speakers = self._requests(batch, front_ends)
        positions = [i for i, request in enumerate(requests) if request is not None and results[i] is None]
        if positions:
            done = await self._synthesize([requests[i] for i in positions])
            for i, result in zip(positions, done, strict=True):
                if result.error:
                    result.error = with_source(result.error, str(batch["source"][i]))
                results[i] = result
        identity = {  # absent when the stage is used outside the job (its columns are then null)
            name: table.column(name) if name in table.column_names else pa.nulls(table.num_rows, pa.string())
            for name in IDENTITY_COLUMNS
        }
        return self._table(results, [str(s) for s in batch["source"]], requests, speakers, identity)

    def _requests(self, batch: dict[str, list], front_ends: list) -> tuple[list, list, list]:
        """(results so far: error rows filled in, each row's request or None, each row's speaker column)."""
        from .rows import failed, request_for_row

        n = len(batch["id"])
        results: list = [None] * n
        requests: list = [None] * n
        speakers: list[str | None] = [None] * n
        for i in range(n):
            source, row_id, text = str(batch["source"][i]), batch["id"][i], batch["text"][i]
            if batch["error"][i]:
                results[i] = failed(row_id, text, batch["error"][i])
                continue
            fields = json.loads(batch["fields"][i]) if batch["fields"][i] else {}
            try:
                request, speaker = request_for_row(source, row_id, {"text": text, **fields}, self.defaults, self.voices)
                if front_ends[i] is None:  # the prepare stage tokenises every row it does not fail
                    raise RequestError(
                        f"{source}: reached the TTS stage without token ids from the prepare stage; this is a raytts "
                        f"bug, please report it with the row"
                    )
            except RequestError as err:
                results[i] = failed(row_id, text, str(err))
                continue
            request.front_end = front_ends[i]
            requests[i], speakers[i] = request, speaker
        return results, requests, speakers

    def _table(
        self, results: list, sources: list[str], requests: list, speakers: list, identity: dict[str, Any]
    ) -> pa.Table:
        from .rows import result_columns

        n = len(results)
        stats = self.synthesizer.batcher.stats
        rows = [
            result_columns(r, source, speakers[i], requests[i].params.seed if requests[i] else None, self.model_id,
                           self.settings.save_codes)
            for i, (r, source) in enumerate(zip(results, sources, strict=True))
        ]  # fmt: skip
        columns = {name: [row[name] for row in rows] for name in rows[0]} if rows else {}
        columns.update(
            worker=[self.worker] * n,
            engine_occupancy=[float(stats.occupancy)] * n,
            engine=[_part_accounting(stats.accounting())] * n,
            **identity,
        )
        # One flat int16 buffer plus offsets: no per-sample Python objects on the way to Arrow, and the samples
        # are quantised exactly as the 16-bit FLAC/WAV writers would (`actors.audio.pcm16_flat`).
        offsets, flat = pcm16_flat([r.audio for r in results])
        columns["pcm"] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))
        return pa.Table.from_pydict(columns, schema=STAGE_SCHEMA)


def _release_device_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _node_id() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - outside Ray (unit use) there is no node id
        return "local"


def _part_accounting(accounting: dict[str, float | int]) -> dict[str, float | int]:
    """The fields of the parts' `engine` column (ENGINE_ACCOUNTING): a fixed schema, so parts stay readable together;
    newer counters (refine-text steps) are in `raytts synth`'s report and Serve's /v1/stats."""
    return {name: accounting[name] for name in ENGINE_ACCOUNTING.names}
