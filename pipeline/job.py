"""`raytts run`: the offline job as a Ray Data graph, resumable, with every input row accounted for exactly once.

Graph: read shards as bytes -> parse rows (CPU) -> drop rows finished by earlier runs -> repartition by rows ->
prepare (CPU: normalise, split, tokenise) -> TTS actors (one engine replica each, several batches in flight) ->
store actors (CPU, autoscaled): encode audio, write audio objects and the block's Parquet part. The driver only
sees one small summary row per block.

Exactly-once: each run adds Parquet parts under `{output}/parts/`, each named by a digest of its rows' keys (a
block that Ray Data retries rewrites its own part); a row's key is its id (or its source line when it has none or
when an earlier row has the same id: that row owns the id).
Before running, the job reads the keys already present in readable parts (leftovers of killed writers are removed
first) and skips them, so a re-run after any crash finishes only the missing rows and the union of parts holds
every input key exactly once.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from .config import JobConfig
from .inputs import duplicate_id_error
from .parts import drop_failed_rows, filesystem, iter_outputs, key_array, read_outputs
from .prepare import prepare_rows
from .resources import STORE_ACTOR_CPUS, gpus_per_actor, pool_problems
from .sources import (
    AUDIO_EXTENSIONS,
    SPEAKER_EXTENSIONS,
    TEXT_EXTENSIONS,
    expand_paths,
    read_speaker_shard,
    read_text_shard,
)

log = logging.getLogger(__name__)


@dataclass
class JobReport:
    rows: int = 0  # rows in the output (all runs)
    ok: int = 0
    failed: int = 0
    this_run: int = 0  # rows processed by this run
    skipped_finished: int = 0
    audio_seconds: float = 0.0  # all ok rows in the output
    audio_seconds_this_run: float = 0.0  # rows this run produced: the job's speed
    wall_seconds: float = 0.0
    problems: list[str] = field(default_factory=list)  # inputs that yielded no rows (missing shards, ...)
    failures: list[dict[str, Any]] = field(default_factory=list)
    workers: dict[str, dict[str, float]] = field(default_factory=dict)
    output: str = ""

    @property
    def exit_status(self) -> int:
        return 0 if self.failed == 0 and not self.problems else 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": "finished",
            "rows": self.rows,
            "ok": self.ok,
            "failed": self.failed,
            "this_run": self.this_run,
            "skipped_finished": self.skipped_finished,
            "audio_seconds": round(self.audio_seconds, 3),
            "audio_seconds_this_run": round(self.audio_seconds_this_run, 3),
            "wall_seconds": round(self.wall_seconds, 3),
            "audio_seconds_per_second": round(self.audio_seconds_this_run / self.wall_seconds, 3)
            if self.wall_seconds
            else 0,
            "problems": self.problems,
            "workers": self.workers,
            "output": self.output,
            "failures": self.failures,
        }


def finished_keys(output: str, retry_failed: bool, duplicates: pa.Array | None = None) -> pa.Array:
    """Keys (`key_array`, with this input's `duplicates` sources) of rows earlier runs already wrote, as one Arrow
    array: a million keys stay ~30 MB, not a Python set of string objects. With `retry_failed`, failed rows are
    first removed from their parts (so the redone rows do not appear twice) and are not counted as finished."""
    table = read_outputs(output, ["id", "source", "error"], clean=True)
    if retry_failed and table.column("error").null_count != table.num_rows:
        log.info("retry_failed: removed %d failed rows from earlier parts to redo them", drop_failed_rows(output))
        table = read_outputs(output, ["id", "source", "error"], clean=True)
    return pc.unique(key_array(table.column("id"), table.column("source"), duplicates))


def _source_order(source: str) -> tuple[str, int]:
    match = re.match(r"^(.*):(?:row)?(\d+)$", source)
    return (match.group(1), int(match.group(2))) if match else (source, 0)


def find_duplicates(ids: pa.ChunkedArray, sources: pa.ChunkedArray) -> dict[str, str]:
    """source -> error for every row whose id an earlier (file, line) already used, or differs from one only in
    case (ids name audio files). Counting happens in Arrow; only the rows of repeated ids (usually none) become
    Python objects."""
    rows = pa.table({"id": ids.cast(pa.string()), "source": sources.cast(pa.string())})
    rows = rows.filter(pc.fill_null(pc.not_equal(rows.column("id"), ""), False))
    rows = rows.append_column("folded", pc.utf8_lower(rows.column("id")))
    counts = rows.group_by("folded").aggregate([("source", "count")])
    repeated = counts.filter(pc.greater(counts.column("source_count"), 1)).column("folded")
    if len(repeated) == 0:
        return {}
    by_id: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for row in rows.filter(pc.is_in(rows.column("folded"), value_set=repeated.combine_chunks())).to_pylist():
        by_id[row["folded"]].append((row["source"], row["id"]))
    duplicates = {}
    for rows_of_id in by_id.values():
        (first_source, first_id), *rest = sorted(rows_of_id, key=lambda r: _source_order(r[0]))
        for source, row_id in rest:
            duplicates[source] = duplicate_id_error(source, row_id, first_id, first_source)
    return duplicates


def unfinished_plan(sizes: list[int], done: pa.ChunkedArray) -> list[tuple[int, pa.Array | None]]:
    """(block index, rows to keep) for the blocks that still have work: `None` keeps a block whole (none of its rows
    is finished), a mask keeps its unfinished rows; a block whose rows are all finished is left out. `done` holds
    one flag per row of the blocks in order (`sizes` rows each)."""
    plan: list[tuple[int, pa.Array | None]] = []
    offset = 0
    for index, size in enumerate(sizes):
        flags = done.slice(offset, size)
        offset += size
        finished = pc.sum(flags).as_py() or 0
        if finished == 0 and size:
            plan.append((index, None))
        elif finished < size:
            plan.append((index, pc.invert(flags).combine_chunks()))
    return plan


def keep_rows(block: pa.Table, mask: pa.Array) -> pa.Table:
    return block.filter(mask)


def _encode_speakers(config: JobConfig, rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each reference speaker encoded once (DVAE encoder) into an upstream prompt string."""
    import soundfile as sf
    from smart_open import open as sopen

    from actors.replica import RequestError, Synthesizer
    from actors.speaker import encode_prompt

    synth = Synthesizer(model=config.model, device="cpu", max_batch_size=1, budget_bytes=256 << 20,
                        max_new_tokens=64, max_prompt_tokens=64, fsq_variant=config.engine.fsq, verify=config.engine.verify)  # fmt: skip
    speakers: dict[str, dict[str, Any]] = {}
    for row in rows:
        name = row["speaker"]
        if row["error"]:
            if name:
                speakers[name] = {"error": row["error"]}
            continue
        if name in speakers:
            speakers[name] = {"error": f"{row['source']}: speaker {name!r} is defined twice"}
            continue
        try:
            if row["audio_bytes"] is not None:
                import io

                audio, rate = sf.read(io.BytesIO(row["audio_bytes"]), dtype="float32", always_2d=False)
            else:
                with sopen(row["audio_path"], "rb") as f:
                    audio, rate = sf.read(f, dtype="float32", always_2d=False)
            if rate < 8000:
                raise RequestError(f"sample rate {rate} Hz is too low for speech (need >= 8000 Hz)")
            codes = synth.encode_reference(audio, int(rate))
            speakers[name] = {"prompt": encode_prompt(codes), "text": row["text"], "frames": int(codes.shape[1])}
        except (RequestError, OSError, RuntimeError, ValueError, sf.LibsndfileError) as err:
            where = row["audio_path"] or row["source"]
            speakers[name] = {"error": f"{row['source']}: reference audio {where} unusable ({err})"}
    return speakers


def _tokenizer_of(model: str, verify: str) -> dict[str, Any]:
    """The checkpoint's tokenizer file and vocabulary size, for the prepare stage (runs as a task: it resolves, and
    if needed downloads, the checkpoint on a worker, never in the driver)."""
    from actors.checkpoint import read_model_config, resolve

    checkpoint = resolve(model, verify=verify)
    return {
        "json": (checkpoint.asset / "tokenizer" / "tokenizer.json").read_text(),
        "num_text_tokens": read_model_config(checkpoint.asset).gpt.num_text_tokens,
    }


def _parse_text(row: dict[str, Any], names: dict[str, str]) -> list[dict[str, Any]]:
    return read_text_shard(row["path"], names.get(row["path"]))


def _shard_paths(files: list[str]) -> Any:
    """A dataset of shard paths for the parse tasks, which read and parse their own files (a file that cannot be
    read or decompressed is that file's error, not a failed read task). Two blocks per cluster CPU, as Ray Data's
    file readers plan: one block per file made 2,000 small shards parse 8x slower (task overhead)."""
    import ray

    blocks = max(1, min(len(files), 2 * int(ray.cluster_resources().get("CPU", 1))))
    return ray.data.from_items([{"path": f} for f in files], override_num_blocks=blocks)


def source_names(files: list[str], base: str | None) -> dict[str, str]:
    """How local shards are named in `source` (and so in the keys of rows without ids and in .txt ids): relative
    to `base` (`inputs.base`, by default the job YAML's folder) when they lie inside it, so the keys stay the same
    when the whole folder moves, as the package folder `ray job submit --working-dir` unpacks into does with every
    cluster session. Other files keep their absolute path."""
    if base is None:
        return {}
    base = os.path.abspath(base)
    names = {}
    for path in files:
        if "://" not in path and os.path.isabs(path) and os.path.commonpath([base, path]) == base:
            names[path] = os.path.relpath(path, base)
    return names


def _parse_speakers(row: dict[str, Any]) -> list[dict[str, Any]]:
    return read_speaker_shard(row["path"])


class PoolDoesNotFit(ValueError):
    """The engine actor pool cannot run on this Ray: raised before the job reads or writes anything."""


class ModelUnusable(ValueError):
    """The job's model cannot be resolved or read: raised before the engine actors start."""


class OutputUnusable(ValueError):
    """The output location cannot be written or listed: raised before any synthesis."""


def check_output(config: JobConfig) -> None:
    """Fail before any synthesis when the output cannot take parts (pyarrow) or audio files (smart-open), or when
    the report cannot be written there (wrong credentials, read-only bucket, missing bucket)."""
    output = config.output.path.rstrip("/")
    try:
        fs, base = filesystem(output)
    except (pa.ArrowException, OSError) as err:
        raise OutputUnusable(
            f"output.path {output!r}: Parquet parts cannot be written there ({err}); use a local folder or an "
            f"s3:// or gs:// URI"
        ) from err
    if config.output.audio_files and "://" in output:
        from smart_open.transport import get_transport

        scheme = output.split("://", 1)[0]
        try:
            get_transport(scheme)
        except (ImportError, NotImplementedError) as err:
            raise OutputUnusable(
                f"output.path {output!r}: audio files cannot be written to {scheme}:// ({err}); install smart-open's "
                f"extra for it (e.g. pip install 'smart-open[gcs]') or set output.audio_files: false"
            ) from err
    # The probe is the report itself, marked running until the job overwrites it with the final report: a job that
    # died leaves a report saying so, and object stores get no marker objects from creating or deleting anything.
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            fs.create_dir(base, recursive=True)
        with fs.open_output_stream(f"{base}/_report.json") as f:
            started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            f.write(json.dumps({"status": "running", "started": started, "output": output}).encode() + b"\n")
    except (pa.ArrowException, OSError) as err:
        raise OutputUnusable(
            f"output.path {output!r}: writing {output}/_report.json failed ({err}); check that the location exists "
            f"and that this machine's and the Ray workers' credentials may write there"
        ) from err


def with_actor_gpus(config: JobConfig) -> JobConfig:
    """The config with `actors.num_gpus` resolved against the cluster this process joined (auto -> 1 or 0)."""
    import ray

    num_gpus, warning = gpus_per_actor(config.actors, config.engine.device, ray.nodes())
    if warning:
        log.warning("actor pool: %s", warning)
    return config.model_copy(update={"actors": config.actors.model_copy(update={"num_gpus": num_gpus})})


def check_pool(config: JobConfig, local: bool) -> None:
    """Refuse (local Ray) or warn (cluster: an autoscaler may still add nodes) when the engine actors cannot be
    placed or would leave the CPU stages no CPU; Ray Data itself would just wait at 0 rows forever."""
    import ray

    problems = pool_problems(config.actors, ray.nodes())
    fatal = [p.message for p in problems if p.fatal]
    if fatal and local:
        raise PoolDoesNotFit("; ".join(fatal) + " (this is a local Ray: nothing will add resources to it)")
    for problem in problems:
        suffix = "; waiting for the cluster to add resources (the job stalls if it never does)" if problem.fatal else ""
        log.warning("actor pool: %s%s", problem.message, suffix)


def run_job(config: JobConfig, address: str | None = None) -> JobReport:
    """Run the job on `address`, the cluster of `ray job submit` (RAY_ADDRESS), the Ray this process already
    joined, or else a local Ray it starts and stops. Raises PoolDoesNotFit (before any work) when the engine
    actors cannot run on a local Ray."""
    import ray

    started = time.perf_counter()
    check_output(config)
    owns_ray = not ray.is_initialized()
    local = owns_ray and not address and not os.environ.get("RAY_ADDRESS")
    if owns_ray:
        if address:
            ray.init(address=address)
        elif os.environ.get("RAY_ADDRESS"):
            ray.init()  # inside `ray job submit`: the job's cluster
        else:
            # Logical CPUs: the engine actors must never take every CPU from the read/write tasks (a 2-core
            # machine would otherwise deadlock the streaming executor); torch threads are set per actor.
            ray.init(address="local", num_cpus=max(8, os.cpu_count() or 1))
    try:
        config = with_actor_gpus(config)
        check_pool(config, local)
        _warn_if_local_output_on_a_cluster(config)
        return _run(config, started)
    except Exception as err:
        _write_status(config.output.path.rstrip("/"), {"status": "failed", "error": f"{type(err).__name__}: {err}"})
        raise
    finally:
        if owns_ray:
            ray.shutdown()


def _write_status(output: str, status: dict[str, Any]) -> None:
    """Best effort: replace the running report with why the job stopped (the error itself is raised anyway)."""
    try:
        fs, base = filesystem(output)
        with fs.open_output_stream(f"{base}/_report.json") as f:
            f.write(json.dumps(status, ensure_ascii=False).encode() + b"\n")
    except (pa.ArrowException, OSError) as err:
        log.warning("could not record the job's failure in %s/_report.json: %s", output, err)


def _warn_if_local_output_on_a_cluster(config: JobConfig) -> None:
    import ray

    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    if "://" not in config.output.path and nodes > 1:
        log.warning(
            "output.path %s is a local folder and this Ray has %d nodes: every node writes its parts and audio there, "
            "so it must be one shared filesystem (e.g. NFS) mounted at the same path on every node; otherwise the "
            "driver does not see other nodes' output and a re-run redoes those rows. Use an s3:// or gs:// URI.",
            config.output.path, nodes,
        )  # fmt: skip


def _run(config: JobConfig, started: float) -> JobReport:
    import ray

    from actors.tts_stage import TTSStage

    from .store import StoreAudio

    output = config.output.path.rstrip("/")
    report = JobReport(output=output)
    text_files, problems = expand_paths(config.inputs.text, TEXT_EXTENSIONS)
    report.problems.extend(problems)
    for problem in problems:
        log.error("input problem: %s", problem)

    speakers: dict[str, dict[str, Any]] = {}
    if config.inputs.speakers:
        speaker_files, speaker_problems = expand_paths(config.inputs.speakers, SPEAKER_EXTENSIONS, AUDIO_EXTENSIONS)
        report.problems.extend(speaker_problems)
        if speaker_files:
            rows = _shard_paths(speaker_files).flat_map(_parse_speakers).take_all()
            for row in rows:  # a manifest line without a usable name belongs to no speaker: report it here
                if row["error"] and not row["speaker"]:
                    log.error("speaker manifest problem: %s", row["error"])
                    report.problems.append(row["error"])
            speakers = ray.get(ray.remote(num_cpus=1)(_encode_speakers).remote(config, rows))
            for name, entry in speakers.items():
                if "error" in entry:  # rows naming it fail; the report names the cause even if none does
                    log.error("speaker %s unusable: %s", name, entry["error"])
                    report.problems.append(f"speaker {name!r} unusable: {entry['error']}")

    if not text_files:
        report.wall_seconds = time.perf_counter() - started
        return _finish_report(report, output, finished_keys(output, config.retry_failed))
    # Started now, used after parsing: fetching the tokenizer overlaps with reading the shards.
    tokenizer = ray.remote(num_cpus=1)(_tokenizer_of).remote(config.model, config.engine.verify)

    parsed = (
        _shard_paths(text_files)
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
    finished = finished_keys(output, config.retry_failed, repeats)
    done = pc.is_in(key_array(ids, sources, repeats), value_set=finished)  # one hash lookup per row, one hash table
    todo = len(ids) - (pc.sum(done).as_py() or 0)
    report.skipped_finished = len(ids) - todo
    report.this_run = todo
    if todo:
        # Finished rows are removed per block by the driver's flags: blocks with none pass as they are, the others
        # are filtered by a task with the block's mask; no task has to hold every finished key. Empty blocks (from
        # shards without rows) are left out.
        keep = ray.remote(keep_rows)
        pending = ray.data.from_arrow_refs([
            refs[index] if mask is None else keep.remote(refs[index], mask)
            for index, mask in unfinished_plan(sizes, done)
        ])  # fmt: skip
        actors = config.actors
        # max_concurrent_batches calls run at once on each actor (Ray Data's default is one at a time, however
        # many tasks are queued), all awaiting its one engine: a call's last rows finish while the next call's rows
        # take the freed slots. No block waits queued on a busy actor: it would go to an idle one instead (at the
        # start, the first actor up would take an extra block before the others are up, and at the end an actor
        # could hold one while the others idle); a block's input is a few KB of text, fetched in milliseconds.
        overlap = {
            "max_concurrent_calls_per_actor": actors.max_concurrent_batches,
            "max_tasks_in_flight_per_actor": actors.max_concurrent_batches,
        }
        if actors.size is not None:
            pool = ray.data.ActorPoolStrategy(size=actors.size, **overlap)
        else:
            pool = ray.data.ActorPoolStrategy(min_size=actors.min_size or 1, max_size=actors.max_size or 1, **overlap)
        try:
            tokenizer = ray.get(tokenizer)
        except ray.exceptions.RayTaskError as err:  # the model cannot be resolved: stop before any actor starts
            raise ModelUnusable(f"model {config.model!r}: {err.cause}") from err
        references = {name: {"text": entry.get("text")} for name, entry in speakers.items()}
        summaries = (
            pending.repartition(target_num_rows_per_block=actors.batch_size)
            .map_batches(
                prepare_rows,
                fn_kwargs={
                    "tokenizer": tokenizer,  # ~0.5 MB, shipped once with the operator, not per task
                    "settings": {
                        "speaker": config.speaker,
                        "normalize": config.normalize,
                        "max_segment_tokens": config.engine.max_segment_tokens,
                        "max_chars": config.max_chars,
                        "references": references,
                    },
                },
                batch_size=None,
                batch_format="pyarrow",
            )
            .map_batches(
                TTSStage,
                fn_constructor_kwargs={"job": config.model_dump(), "speakers": speakers, "duplicates": duplicates},
                compute=pool,
                batch_size=actors.batch_size,
                num_gpus=actors.num_gpus,
                num_cpus=actors.num_cpus,
                batch_format="pyarrow",
            )
            .map_batches(
                StoreAudio,
                fn_constructor_kwargs={
                    "output": output,
                    "audio_format": config.output.audio_format,
                    "audio_files": config.output.audio_files,
                },
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=config.output.writers),
                batch_size=actors.batch_size,
                num_cpus=STORE_ACTOR_CPUS,
                batch_format="pyarrow",
            )
        )
        stored = 0
        for summary in summaries.iter_batches(batch_size=None, batch_format="pyarrow"):
            stored += sum(summary.column("rows").to_pylist())
        log.info("synthesis stages stored %d rows at %.1f s", stored, time.perf_counter() - started)
    report.wall_seconds = time.perf_counter() - started
    return _finish_report(report, output, finished)


def _finish_report(report: JobReport, output: str, finished_before: pa.Array) -> JobReport:
    """Totals, per-worker stats, failures and the manifest from the parts, one part at a time: the driver never
    holds every row of a million-row job."""
    # Only the audio's path: reading the `audio` struct would pull every row's encoded bytes back in.
    columns = ["id", "source", "error", "duration_s", "worker", "engine_occupancy", "audio.path"]
    workers: dict[str, dict[str, float]] = {}
    ok_keys: list[pa.ChunkedArray] = []  # of the ok rows, to tell this run's from earlier ones in one lookup
    ok_seconds: list[pa.ChunkedArray] = []
    fs, base = filesystem(output)
    fs.create_dir(base, recursive=True)
    with fs.open_output_stream(f"{base}/manifest.jsonl") as manifest:
        for table in iter_outputs(output, columns):
            ok = _account_part(report, table, workers)
            ok_keys.append(key_array(ok.column("id"), ok.column("source")))
            ok_seconds.append(pc.fill_null(ok.column("duration_s"), 0.0))
            lines = [
                json.dumps({"id": i, "audio": p, "duration_s": d, "error": e}, ensure_ascii=False) + "\n"
                for i, p, d, e in zip(*(table.column(c).to_pylist() for c in ("id", "path", "duration_s", "error")),
                                      strict=True)
            ]  # fmt: skip
            manifest.write("".join(lines).encode())
    if ok_keys:
        keys = pa.chunked_array([c for k in ok_keys for c in k.chunks], type=pa.string())
        seconds = pa.chunked_array([c for s in ok_seconds for c in s.chunks], type=pa.float64())
        new = pc.invert(pc.is_in(keys, value_set=finished_before))
        report.audio_seconds_this_run = pc.sum(pc.filter(seconds, new)).as_py() or 0.0
    report.workers = {
        name: {"rows": w["rows"], "audio_seconds": round(w["audio_seconds"], 3), "occupancy": round(w["occupancy"], 3)}
        for name, w in sorted(workers.items())
    }
    with fs.open_output_stream(f"{base}/_report.json") as f:
        f.write(json.dumps(report.to_dict(), indent=2, ensure_ascii=False).encode() + b"\n")
    return report


def _account_part(report: JobReport, table: pa.Table, workers: dict[str, dict[str, float]]) -> pa.Table:
    """Adds one part's rows to the report's totals, failures and per-worker stats; returns its ok rows."""
    failed = pc.is_valid(table.column("error"))
    report.rows += table.num_rows
    report.failed += pc.sum(failed).as_py() or 0
    report.failures.extend(table.filter(failed).select(["id", "source", "error"]).to_pylist())
    ok = table.filter(pc.invert(failed))
    report.ok += ok.num_rows
    report.audio_seconds += pc.sum(pc.fill_null(ok.column("duration_s"), 0.0)).as_py() or 0.0
    named = table.filter(pc.fill_null(pc.not_equal(table.column("worker"), ""), False))
    stats = pa.table({
        "worker": named.column("worker"),
        "seconds": pc.fill_null(named.column("duration_s"), 0.0),
        "occupancy": pc.fill_null(named.column("engine_occupancy"), 0.0),
    }).group_by("worker").aggregate([("seconds", "count"), ("seconds", "sum"), ("occupancy", "max")])  # fmt: skip
    for row in stats.to_pylist():
        w = workers.setdefault(row["worker"], {"rows": 0, "audio_seconds": 0.0, "occupancy": 0.0})
        w["rows"] += row["seconds_count"]
        w["audio_seconds"] += row["seconds_sum"]
        w["occupancy"] = max(w["occupancy"], row["occupancy_max"])
    return ok
