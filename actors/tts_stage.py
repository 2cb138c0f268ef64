"""The Ray Data GPU stage: one engine replica per actor, rows in, raw audio out.

`__init__` loads and warms the replica; `__call__` only converts columns, resolves speakers and awaits the
shared async engine, so batches that are in flight together (`max_concurrent_batches`) share its continuous
batch. Rows that failed upstream (read errors, duplicates) pass through with their error; every row returns.
Encoding and storing audio are the next, CPU-only stage (pipeline/store.py).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import time
from typing import Any

import numpy as np
import pyarrow as pa

log = logging.getLogger(__name__)

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
        ("worker", pa.string()),
        ("engine_occupancy", pa.float64()),
        ("model", pa.string()),  # the checkpoint as given plus its digest (`ResolvedCheckpoint.model_id`)
    ]
)


class TTSStage:
    def __init__(self, job: dict[str, Any], speakers: dict[str, dict[str, Any]], duplicates: dict[str, str]) -> None:
        started = time.perf_counter()
        import torch

        from pipeline.config import JobConfig

        self.config = JobConfig.model_validate(job)
        engine = self.config.engine
        threads = engine.threads or max(1, int(self.config.actors.num_cpus) or 1)
        torch.set_num_threads(threads)
        self._build_engine()
        self._rebuilding = asyncio.Lock()
        self.rebuilds = 0
        self.speakers = speakers
        self.duplicates = duplicates
        self.worker = f"{_node_id()[:12]}/{os.getpid()}"
        self.model_id = self.synthesizer.checkpoint.model_id  # hashes the files once per actor
        actors, slots = self.config.actors, self.synthesizer.plan.slots
        fed = actors.batch_size * actors.max_concurrent_batches
        if fed < slots:
            log.warning(
                "TTS stage %s: the engine has %d slots but at most %d rows reach it at once (actors.batch_size %d x "
                "actors.max_concurrent_batches %d), so at least %d slots stay idle; raise either so that their "
                "product is >= 1.5x the slots",
                self.worker, slots, fed, actors.batch_size, actors.max_concurrent_batches, slots - fed,
            )  # fmt: skip
        log.info("TTS stage %s ready in %.1f s", self.worker, time.perf_counter() - started)

    def _build_engine(self) -> None:
        from .async_engine import AsyncSynthesizer
        from .replica import Synthesizer, assigned_gpu_share

        engine = self.config.engine
        self.synthesizer = Synthesizer(
            model=self.config.model,
            device=engine.device,
            dtype=engine.dtype,
            decoder=engine.decoder,
            max_batch_size=engine.max_slots,
            budget_bytes=engine.budget_mib << 20 if engine.budget_mib else None,
            max_prompt_tokens=engine.max_prompt_tokens,
            max_new_tokens=self.config.sampling.max_new_tokens,
            max_segment_tokens=engine.max_segment_tokens,
            max_chars=self.config.max_chars,
            fsq_variant=engine.fsq,
            verify=engine.verify,
            compile=engine.compile,
            device_share=assigned_gpu_share(),  # actors.num_gpus as Ray gave it, as for Serve replicas
        )
        self.engine = AsyncSynthesizer(self.synthesizer)

    async def _synthesize(self, requests: list) -> list:
        """The engine's results; if its loop dies (a bug, a device error) the rows in flight fail with the reason,
        the engine is rebuilt once, and the job goes on: one bad step must not kill a million-row job."""
        from .replica import SynthesisResult

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
            return [SynthesisResult(id=r.id, text=r.text, error=message) for r in requests]

    async def __call__(self, table: pa.Table) -> pa.Table:
        from actors.engine.sampling import SamplingParams
        from pipeline.inputs import InputRow, row_voice, to_request

        from .replica import RequestError, SynthesisResult, reference_codes_from_prompt
        from .speaker import SpeakerError, decode_prompt

        sampling = SamplingParams(**self.config.sampling.model_dump())
        batch = {name: table.column(name).to_pylist() for name in ("id", "text", "source", "fields", "error")}
        segment_ids = table.column("segment_ids").to_pylist()  # pipeline/prepare.py: cleaned, split, tokenised
        n = table.num_rows
        results: list[SynthesisResult | None] = [None] * n
        requests, positions = [], []
        speakers_out: list[str | None] = [None] * n
        seeds: list[int | None] = [None] * n
        for i in range(n):
            source = str(batch["source"][i])
            row_id = batch["id"][i]
            text = batch["text"][i]
            error = batch["error"][i] or self.duplicates.get(source)
            fields = json.loads(batch["fields"][i]) if batch["fields"][i] else {}
            if error:
                results[i] = SynthesisResult(id=row_id or "", text=text or "", error=error)
                continue
            try:
                request = to_request(
                    InputRow(source, row_id, {"text": text, **fields}),
                    sampling,
                    self.config.speaker,
                    self.config.normalize,
                )
                name = request.speaker
                if fields.get("reference_audio"):
                    raise RequestError(
                        "reference_audio per row is not read by `raytts run` (it would re-encode the audio for "
                        "every row): list the audio in inputs.speakers, where each speaker is encoded once, and "
                        "name it in the row's `speaker`"
                    )
                if fields.get("reference_codes"):  # an upstream prompt string, as in `raytts synth`: no encoding
                    request.reference_codes = reference_codes_from_prompt(str(fields["reference_codes"]))
                    speakers_out[i] = name
                elif name is not None and name in self.speakers:
                    entry = self.speakers[name]
                    if entry.get("error"):
                        raise RequestError(f"speaker {name!r} is unusable: {entry['error']}")
                    request.reference_codes = decode_prompt(entry["prompt"])
                    request.speaker, request.reference_text = row_voice(fields, self.config.speaker, self.speakers)
                    speakers_out[i] = name
                else:
                    if name is not None and _looks_like_a_name(name):
                        known = sorted(self.speakers)[:10]
                        raise RequestError(
                            f"unknown speaker {name!r}: not one of the reference speakers {known} and not "
                            f"'seed:N' or an upstream speaker string"
                        )
                    speakers_out[i] = name
                seeds[i] = request.params.seed
                request.segment_ids = segment_ids[i]
                if request.segment_ids is None:  # the prepare stage tokenises every row it does not fail
                    raise RequestError(
                        "reached the TTS stage without token ids from the prepare stage; this is a raytts bug, "
                        "please report it with the row"
                    )
            except (RequestError, SpeakerError, ValueError) as err:
                message = str(err) if str(err).startswith(source) else f"{source}: {err}"
                results[i] = SynthesisResult(id=row_id or "", text=text or "", error=message)
                continue
            requests.append(request)
            positions.append(i)
        if requests:
            for i, result in zip(positions, await self._synthesize(requests), strict=True):
                if result.error and not result.error.startswith(str(batch["source"][i])):
                    result.error = f"{batch['source'][i]}: {result.error}"
                results[i] = result
        stats = self.synthesizer.batcher.stats
        columns = {
            "id": [r.id or None for r in results],
            "text": [r.text for r in results],
            "source": [str(s) for s in batch["source"]],
            "speaker": speakers_out,
            "seed": seeds,
            "pcm": [r.audio if r.audio is not None else np.zeros(0, np.float32) for r in results],
            "segments": [r.segments if r.ok else None for r in results],
            "truncated_segments": [r.truncated_segments if r.ok else None for r in results],
            "codes": [
                r.codes.tolist() if r.ok and r.codes is not None and self.config.output.save_codes else None
                for r in results
            ],
            "error": [r.error for r in results],
            "worker": [self.worker] * n,
            "engine_occupancy": [float(stats.occupancy)] * n,
            "model": [self.model_id] * n,
        }
        # One flat int16 buffer plus offsets: no per-sample Python objects on the way to Arrow, and the samples
        # are quantised exactly as the 16-bit FLAC/WAV writers would (clip to [-1, 1], scale by 32767).
        pcm = [to_pcm16(p) for p in columns["pcm"]]
        offsets = np.zeros(len(pcm) + 1, dtype=np.int32)
        np.cumsum([p.size for p in pcm], out=offsets[1:])
        flat = np.concatenate(pcm) if pcm else np.zeros(0, np.int16)
        columns["pcm"] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))
        return pa.Table.from_pydict(columns, schema=STAGE_SCHEMA)


def to_pcm16(audio: np.ndarray) -> np.ndarray:
    return np.round(np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0) * 32767.0).astype(np.int16)


def _looks_like_a_name(value: str) -> bool:
    return (
        len(value) <= 100
        and all(ch.isalnum() and ch.isascii() or ch in "._-" for ch in value)
        and not value.startswith("seed")
    )


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
