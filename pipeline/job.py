"""`raytts run`: the offline job as a Ray Data graph, resumable, with every input row accounted for exactly once.

Graph: read shards as bytes -> parse rows (CPU) -> the books decide what is finished -> repartition by rows ->
prepare (CPU: normalise, split, tokenise) -> TTS actors (one engine replica each, several batches in flight) ->
store actors (CPU, autoscaled): encode audio, write audio objects and the block's Parquet part (`pipeline.graph`).
The driver only sees one small summary row per block.

Exactly once, across crashes and edits: one driver per output (`pipeline.lease`); each row is keyed by its id (or
its content) and carries digests of what makes its audio (`pipeline.identity`); before synthesis the books
(`pipeline.books`) keep the rows that are finished, supersede the rest and pick the rows to synthesise; before the
run says `finished` they check that the output holds every input row exactly once. The report is
`pipeline.report`'s, the checks before any work `pipeline.checks`'.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from actors.cluster import joined_ray
from actors.text import front_end_version

from .books import apply_plan, close_books, plan_run
from .checks import (
    ModelUnusable,
    OutputUnusable,
    PoolDoesNotFit,
    check_output,
    check_pool,
    hold_output,
    mark_running,
    warn_if_local_output_on_a_cluster,
    with_actor_gpus,
)
from .config import JobConfig
from .graph import synthesis_stages
from .identity import job_digest as digest_of_job
from .identity import job_settings, speaker_digests
from .inputs import unknown_fields_note
from .lease import LeaseLost, OutputBusy, OutputLease
from .ledger import Ledger, books_folder, remove_books_folders, write_block_books
from .progress import Progress
from .report import JobReport, finish_report, write_status
from .settings_record import record_settings, settings_changes
from .shards import RowContext, read_text_shard
from .sources import TEXT_EXTENSIONS, expand_paths, shard_paths, source_names
from .speakers import job_speakers

__all__ = ["JobReport", "LeaseLost", "ModelUnusable", "OutputBusy", "OutputUnusable", "PoolDoesNotFit", "run_job"]

log = logging.getLogger(__name__)

LOCAL_RAY_CPUS = 8  # logical CPUs of a local Ray at least: the engine actors never take every CPU from the CPU stages


def run_job(config: JobConfig, address: str | None = None, quiet: bool = False) -> JobReport:
    """Run the job on `address`, the cluster of `ray job submit` (RAY_ADDRESS), the Ray this process already
    joined, or else a local Ray it starts and stops. Raises OutputBusy when another driver holds the output (before
    writing anything), PoolDoesNotFit (before any work) when the engine actors cannot run on a local Ray. `quiet`:
    no INFO lines of Ray's own (the CLI's default)."""
    started = time.perf_counter()
    check_output(config)
    output = config.output.path.rstrip("/")
    with joined_ray(address, LOCAL_RAY_CPUS, quiet) as ray_connection, hold_output(output) as lease:
        status = mark_running(output)
        try:
            config = with_actor_gpus(config)
            check_pool(config, ray_connection.local)
            warn_if_local_output_on_a_cluster(config)
            return _run(config, started, lease, status)
        except BaseException as err:  # Ctrl-C and SystemExit too: the report says the run stopped, and why
            stopped = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
            write_status(output, {**status, "status": stopped, "error": plain_error(err)})
            raise


def tokenizer_of(model: str, verify: str, onnx_path: str | None = None) -> dict[str, Any]:
    """The checkpoint's tokenizer file, vocabulary size and content digest, for the prepare stage and the books
    (runs as a task: it resolves, and if needed downloads, the checkpoint on a worker, never in the driver). With
    `onnx_path` (engine.onnx.path), that folder must be an export of this checkpoint: checked here, before any
    engine actor starts."""
    from actors.checkpoint import read_model_config, resolve

    checkpoint = resolve(model, verify=verify)
    if onnx_path is not None:
        from actors.onnx.manifest import check_source

        check_source(onnx_path, checkpoint.sha256, checkpoint.model_id)
    return {
        "json": (checkpoint.asset / "tokenizer" / "tokenizer.json").read_text(),
        "num_text_tokens": read_model_config(checkpoint.asset).gpt.num_text_tokens,
        "sha256": checkpoint.sha256,
    }


def _parse_text(row: dict[str, Any], names: dict[str, str], context: RowContext) -> list[dict[str, Any]]:
    return read_text_shard(row["path"], names.get(row["path"]), context)


def _inputs(config: JobConfig, report: JobReport) -> list[str]:
    """The text shards to read; the output location's own files are left out (and said)."""
    output = config.output.path.rstrip("/")
    files, problems, inside = expand_paths(config.inputs.text, TEXT_EXTENSIONS, exclude=output)
    if inside:
        note = (
            f"{_count(len(inside), 'file')} in raytts output folders were not read as input: they are this job's "
            f"output ({output}) or another job's (e.g. {inside[0]}); keep outputs outside the input folders to avoid "
            f"this note"
        )
        log.warning("%s", note)
        report.notes.append(note)
    report.problems.extend(problems)
    for problem in problems:
        log.error("input problem: %s", problem)
    return files


def plain_error(err: BaseException) -> str:
    """An error as one line of plain text for the report (Ray's task errors carry terminal colour codes)."""
    text = ANSI_CODES.sub("", f"{type(err).__name__}: {err}" if str(err) else type(err).__name__)
    return text.strip()


ANSI_CODES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _run(config: JobConfig, started: float, lease: OutputLease, status: dict[str, Any]) -> JobReport:
    import ray

    output = config.output.path.rstrip("/")
    report = JobReport(output=output)
    text_files = _inputs(config, report)
    speakers = job_speakers(config, report)
    digests = speaker_digests(speakers)
    # Started now, used after parsing: fetching the tokenizer overlaps with reading the shards.
    onnx_path = config.engine.onnx.path if config.engine.backend == "onnx" else None
    model_ref = ray.remote(num_cpus=1)(tokenizer_of).remote(config.model, config.engine.verify, onnx_path)
    context = RowContext(digests, config.speaker)
    with Ledger() as books:
        refs = _parse(config, text_files, context, started, report, books)
        try:
            model = ray.get(model_ref)
        except ray.exceptions.RayTaskError as err:  # the model cannot be resolved: stop before any actor starts
            raise ModelUnusable(f"model {config.model!r}: {err.cause}") from err
        settings = job_settings(config, model["sha256"], front_end_version(config.normalize))
        job_digest = digest_of_job(settings, digests.get(config.speaker) if config.speaker else None)
        record_settings(output, job_digest, settings)
        keep_gone = bool(report.problems) or books.has_unread_files()
        plan = plan_run(output, books, job_digest, config.retry_failed, config.output.audio_files, keep_gone)
        plan.redo.settings = settings_changes(output, plan.old_job_digests, settings)
        report.redo = plan.redo.to_dict()
        report.this_run = plan.to_synthesise
        report.skipped_finished = books.count - report.this_run
        status.update(this_run=report.this_run, skipped_finished=report.skipped_finished, redo=report.redo)
        write_status(output, status)  # what this run redoes, and why, survives a run that dies
        lease.check()
        apply_plan(output, plan)
        seconds = 0.0
        if report.this_run:
            pending = _pending(refs, books, plan.todo)
            seconds = _synthesise(pending, config, model, speakers, job_digest, lease, status, report.this_run)
        lease.check()
        closing = close_books(output, books, job_digest, config.output.audio_files)
    report.wall_seconds = time.perf_counter() - started
    return finish_report(report, output, closing, seconds)


def _synthesise(
    pending: Any,
    config: JobConfig,
    model: dict[str, Any],
    speakers: dict[str, dict[str, Any]],
    job_digest: str,
    lease: OutputLease,
    status: dict[str, Any],
    rows: int,
) -> float:
    """Run the synthesis stages over `pending`, saying progress; returns the engine seconds the blocks reported."""
    output = config.output.path.rstrip("/")
    summaries = synthesis_stages(pending, config, model, speakers, job_digest, lease.token_for_workers)
    progress = Progress(rows, publish=lambda state: write_status(output, {**status, "progress": state}))
    seconds = 0.0
    for summary in summaries.iter_batches(batch_size=None, batch_format="pyarrow"):
        block_rows, failed, block_seconds = (sum(summary.column(c).to_pylist()) for c in ("rows", "failed", "seconds"))
        progress.add(block_rows, failed, block_seconds)
        seconds += block_seconds
        lease.check()
    progress.say()
    return seconds


def _parse(
    config: JobConfig, text_files: list[str], context: RowContext, started: float, report: JobReport, books: Ledger
) -> list[Any]:
    """Parse every shard (tasks) and load the rows' identities into `books` (each block's written by a task to a
    file under the output, read by the ledger: never through the driver's memory); returns the parsed blocks' refs.
    Fields no part of raytts reads are named in the report's notes."""
    import ray

    if not text_files:
        books.finish_inputs()
        return []
    parsed = (
        shard_paths(text_files)
        .flat_map(_parse_text, fn_kwargs={"names": source_names(text_files, config.inputs.base), "context": context})
        .materialize()
    )
    refs = parsed.to_arrow_refs()
    output = config.output.path.rstrip("/")
    folder = books_folder(output)
    try:
        write = ray.remote(num_cpus=1)(write_block_books)
        sizes = ray.get([write.remote(ref, number, folder) for number, ref in enumerate(refs)])
        books.load_blocks(folder, sizes)
    finally:
        remove_books_folders(output)
    books.finish_inputs()
    log.info("parsed %d input rows in %.1f s", books.count, time.perf_counter() - started)
    note = unknown_fields_note(books.unknown_field_counts())
    if note:
        log.warning("%s", note)
        report.notes.append(note)
    return refs


def amend_block(block: pa.Table, keep: pa.Array | None, fixups: dict[str, dict]) -> pa.Table:
    """A parsed block's rows to synthesise (`keep`), with the identity fixups of its rows applied."""
    if keep is not None:
        block = block.filter(keep)
    if fixups:
        sources = block.column("source").to_pylist()
        for name in ("id", "key", "input_digest", "error"):
            values = block.column(name).to_pylist()
            values = [fixups.get(s, {}).get(name, v) for s, v in zip(sources, values, strict=True)]
            block = block.set_column(block.schema.get_field_index(name), name, pa.array(values, pa.string()))
    return block


def _pending(refs: list[Any], books: Ledger, todo: pa.ChunkedArray) -> Any:
    """A dataset of the parsed rows to synthesise: blocks with nothing to change pass as they are, the others are
    filtered and amended by a task with the block's mask and fixups; blocks with nothing to do are left out."""
    import ray

    amend = ray.remote(amend_block)
    pending = []
    offset = 0
    fixed = books.blocks_with_fixups()
    for number, (ref, size) in enumerate(zip(refs, books.sizes, strict=True)):
        flags = todo.slice(offset, size)
        offset += size
        count = pc.sum(flags).as_py() or 0
        if count == 0:
            continue
        mine = books.fixups_of(number) if number in fixed else {}
        if count == size and not mine:
            pending.append(ref)
        else:
            pending.append(amend.remote(ref, None if count == size else flags.combine_chunks(), mine))
    return ray.data.from_arrow_refs(pending)
