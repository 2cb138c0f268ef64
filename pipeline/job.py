"""`raytts run`: the offline job as a Ray Data graph, resumable, with every input row accounted for exactly once.

Graph: read shards as bytes -> parse rows (CPU) -> drop rows finished by earlier runs -> repartition by rows ->
prepare (CPU: normalise, split, tokenise) -> TTS actors (one engine replica each, several batches in flight) ->
store actors (CPU, autoscaled): encode audio, write audio objects and the block's Parquet part (`pipeline.graph`).
The driver only sees one small summary row per block.

Exactly-once: each run adds Parquet parts under `{output}/parts/`, each named by a digest of its rows' keys (a
block that Ray Data retries rewrites its own part); a row's key is its id (or its source line when it has none or
when an earlier row has the same id: that row owns the id).
Before running, the job reads the keys already present in readable parts (leftovers of killed writers are removed
first) and skips them (`pipeline.bookkeeping`), so a re-run after any crash finishes only the missing rows and the
union of parts holds every input key exactly once. The report is `pipeline.report`'s, the checks before any work
`pipeline.checks`'.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from actors.cluster import joined_ray

from .bookkeeping import finished_keys, keep_rows, unfinished_plan
from .checks import (
    ModelUnusable,
    OutputUnusable,
    PoolDoesNotFit,
    check_output,
    check_pool,
    warn_if_local_output_on_a_cluster,
    with_actor_gpus,
)
from .config import JobConfig
from .graph import synthesis_stages
from .inputs import find_duplicates
from .parts import key_array
from .report import JobReport, finish_report, write_status
from .shards import read_text_shard
from .sources import TEXT_EXTENSIONS, expand_paths, shard_paths, source_names
from .speakers import job_speakers

__all__ = ["JobReport", "ModelUnusable", "OutputUnusable", "PoolDoesNotFit", "run_job"]

log = logging.getLogger(__name__)

LOCAL_RAY_CPUS = 8  # logical CPUs of a local Ray at least: the engine actors never take every CPU from the CPU stages


def run_job(config: JobConfig, address: str | None = None) -> JobReport:
    """Run the job on `address`, the cluster of `ray job submit` (RAY_ADDRESS), the Ray this process already
    joined, or else a local Ray it starts and stops. Raises PoolDoesNotFit (before any work) when the engine
    actors cannot run on a local Ray."""
    started = time.perf_counter()
    check_output(config)
    with joined_ray(address, LOCAL_RAY_CPUS) as ray_connection:
        try:
            config = with_actor_gpus(config)
            check_pool(config, ray_connection.local)
            warn_if_local_output_on_a_cluster(config)
            return _run(config, started)
        except Exception as err:
            write_status(config.output.path.rstrip("/"), {"status": "failed", "error": f"{type(err).__name__}: {err}"})
            raise


def tokenizer_of(model: str, verify: str, onnx_path: str | None = None) -> dict[str, Any]:
    """The checkpoint's tokenizer file and vocabulary size, for the prepare stage (runs as a task: it resolves, and
    if needed downloads, the checkpoint on a worker, never in the driver). With `onnx_path` (engine.onnx.path), that
    folder must be an export of this checkpoint: checked here, before any engine actor starts."""
    from actors.checkpoint import read_model_config, resolve

    checkpoint = resolve(model, verify=verify)
    if onnx_path is not None:
        from actors.onnx.manifest import check_source

        check_source(onnx_path, checkpoint.sha256, checkpoint.model_id)
    return {
        "json": (checkpoint.asset / "tokenizer" / "tokenizer.json").read_text(),
        "num_text_tokens": read_model_config(checkpoint.asset).gpt.num_text_tokens,
    }


def _parse_text(row: dict[str, Any], names: dict[str, str]) -> list[dict[str, Any]]:
    return read_text_shard(row["path"], names.get(row["path"]))


def _run(config: JobConfig, started: float) -> JobReport:
    import ray

    output = config.output.path.rstrip("/")
    report = JobReport(output=output)
    text_files, problems = expand_paths(config.inputs.text, TEXT_EXTENSIONS)
    report.problems.extend(problems)
    for problem in problems:
        log.error("input problem: %s", problem)
    speakers = job_speakers(config, report)
    if not text_files:
        report.wall_seconds = time.perf_counter() - started
        return finish_report(report, output, finished_keys(output, config.retry_failed))
    # Started now, used after parsing: fetching the tokenizer overlaps with reading the shards.
    onnx_path = config.engine.onnx.path if config.engine.backend == "onnx" else None
    tokenizer = ray.remote(num_cpus=1)(tokenizer_of).remote(config.model, config.engine.verify, onnx_path)
    pending, duplicates, finished = _unfinished_rows(config, text_files, report, started)
    if report.this_run:
        try:
            tokenizer = ray.get(tokenizer)
        except ray.exceptions.RayTaskError as err:  # the model cannot be resolved: stop before any actor starts
            raise ModelUnusable(f"model {config.model!r}: {err.cause}") from err
        summaries = synthesis_stages(pending, config, tokenizer, speakers, duplicates)
        stored = 0
        for summary in summaries.iter_batches(batch_size=None, batch_format="pyarrow"):
            stored += sum(summary.column("rows").to_pylist())
        log.info("synthesis stages stored %d rows at %.1f s", stored, time.perf_counter() - started)
    report.wall_seconds = time.perf_counter() - started
    return finish_report(report, output, finished)


def _unfinished_rows(
    config: JobConfig, text_files: list[str], report: JobReport, started: float
) -> tuple[Any, dict[str, str], pa.Array]:
    """Parse every shard, find duplicate ids and the rows earlier runs finished; returns (a dataset of the rows
    still to do, source -> duplicate error, the finished keys). Sets the report's this_run / skipped counts."""
    import ray

    parsed = (
        shard_paths(text_files)
        .flat_map(_parse_text, fn_kwargs={"names": source_names(text_files, config.inputs.base)})
        .materialize()
    )
    # Keys straight from the parsed blocks (zero-copy reads of the object store), not through another Ray Data op;
    # the bookkeeping stays in Arrow, so the driver holds a few bytes per row, not Python objects.
    refs = parsed.to_arrow_refs()
    blocks = [ray.get(ref) for ref in refs]
    sizes = [b.num_rows for b in blocks]
    # A shard with no rows (an empty file, blank lines only) gives a block with no columns: it has no keys.
    ids = pa.chunked_array([b.column("id").cast(pa.string()) for b in blocks if b.num_rows], type=pa.string())
    sources = pa.chunked_array([b.column("source") for b in blocks if b.num_rows], type=pa.string())
    del blocks
    log.info("parsed %d input rows in %.1f s", len(ids), time.perf_counter() - started)
    duplicates = find_duplicates(ids, sources)
    repeats = pa.array(list(duplicates), type=pa.string())
    finished = finished_keys(config.output.path.rstrip("/"), config.retry_failed, repeats)
    done = pc.is_in(key_array(ids, sources, repeats), value_set=finished)  # one hash lookup per row, one hash table
    todo = len(ids) - (pc.sum(done).as_py() or 0)
    report.skipped_finished = len(ids) - todo
    report.this_run = todo
    # Finished rows are removed per block by the driver's flags: blocks with none pass as they are, the others are
    # filtered by a task with the block's mask; no task has to hold every finished key. Empty blocks (from shards
    # without rows) are left out.
    keep = ray.remote(keep_rows)
    pending = ray.data.from_arrow_refs([
        refs[index] if mask is None else keep.remote(refs[index], mask) for index, mask in unfinished_plan(sizes, done)
    ]) if todo else None  # fmt: skip
    return pending, duplicates, finished
