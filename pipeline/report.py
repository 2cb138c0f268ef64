"""The job's report: totals, failures, per-worker stats and the manifest, computed from the Parquet parts one part at
a time (the driver never holds every row of a million-row job), what this run redid and why, whether the books
closed, and the running/failed status in `_report.json`."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from actors.quality import QualitySummary

from .books import Closing
from .parts import filesystem, iter_outputs

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
    dropped_chars_rows: int = 0  # ok rows whose text lost characters the model cannot say (`dropped_chars`)
    reading_notes_rows: int = 0  # ok rows whose reading replaced or guessed something (`reading_notes`)
    workers: dict[str, dict[str, float]] = field(default_factory=dict)
    output: str = ""
    redo: dict[str, Any] = field(default_factory=dict)  # what this run redid or removed, and why (`books.Redo`)
    books: dict[str, Any] = field(default_factory=dict)  # the closing check (`books.Closing`)
    notes: list[str] = field(default_factory=list)  # things done that are no failure (output files not read, ...)
    qc: QualitySummary = field(default_factory=QualitySummary)  # flag counts and distributions of the measures

    @property
    def closed(self) -> bool:
        return self.books.get("closed", True)

    @property
    def status(self) -> str:
        return "finished" if self.closed else "incomplete"

    @property
    def exit_status(self) -> int:
        return 0 if self.failed == 0 and not self.problems and self.closed else 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
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
            "redo": self.redo,
            "books": self.books,
            "notes": self.notes,
            "dropped_chars_rows": self.dropped_chars_rows,
            "reading_notes_rows": self.reading_notes_rows,
            "qc": self.qc.to_dict(),
            "workers": self.workers,
            "output": self.output,
            "failures": self.failures,
        }


def finish_report(report: JobReport, output: str, closing: Closing, seconds_this_run: float) -> JobReport:
    """Totals, per-worker stats, failures and the manifest from the parts, one part at a time (the driver never
    holds every row of a million-row job), with the books' closing check; `seconds_this_run`: audio this run made."""
    # Only the audio's path: reading the `audio` struct would pull every row's encoded bytes back in.
    columns = [
        "id", "source", "error", "duration_s", "worker", "engine_occupancy", "engine", "dropped_chars",
        "reading_notes", "qc", "qc_flags", "qc_attempts", "asr_error_rate", "audio.path",
    ]  # fmt: skip
    workers: dict[str, dict[str, Any]] = {}
    fs, base = filesystem(output)
    fs.create_dir(base, recursive=True)
    with fs.open_output_stream(f"{base}/manifest.jsonl") as manifest:
        for table in iter_outputs(output, columns):
            _account_part(report, table, workers)
            lines = [
                json.dumps({"id": i, "audio": p, "duration_s": d, "error": e}, ensure_ascii=False) + "\n"
                for i, p, d, e in zip(*(table.column(c).to_pylist() for c in ("id", "path", "duration_s", "error")),
                                      strict=True)
            ]  # fmt: skip
            manifest.write("".join(lines).encode())
    report.audio_seconds_this_run = seconds_this_run
    report.books = {"closed": closing.closed, "orphan_audio_removed": 0, **closing.counts}
    if closing.orphans_removed:
        report.notes.append(
            f"removed {closing.counts['orphan_audio_removed']} audio files under {output}/audio that no row names "
            f"(e.g. {closing.orphans_removed}): left by rows an earlier run superseded"
        )
    if not closing.closed:
        why = (
            f"{report.redo['gone_kept']} rows whose input is gone were kept because some inputs could not be read "
            f"(see problems): fix the inputs and run again"
            if report.redo.get("gone_kept")
            else "its parts or audio files changed while the job ran (deleted, or written by something else): run "
            "the job again to redo them"
        )
        report.books["problem"] = f"the output does not hold every input row exactly once: {closing.summary()}; {why}"
        log.error("books do not close: %s", report.books["problem"])
    report.workers = {
        name: {
            "rows": w["rows"],
            "audio_seconds": round(w["audio_seconds"], 3),
            "occupancy": round(w["occupancy"], 3),
            "engine": w.get("engine"),
        }
        for name, w in sorted(workers.items())
    }
    with fs.open_output_stream(f"{base}/_report.json") as f:
        f.write(json.dumps(report.to_dict(), indent=2, ensure_ascii=False).encode() + b"\n")
    return report


def _account_part(report: JobReport, table: pa.Table, workers: dict[str, dict[str, Any]]) -> None:
    """Adds one part's rows to the report's totals, failures and per-worker stats."""
    failed = pc.is_valid(table.column("error"))
    report.rows += table.num_rows
    report.failed += pc.sum(failed).as_py() or 0
    report.failures.extend(table.filter(failed).select(["id", "source", "error"]).to_pylist())
    ok = table.filter(pc.invert(failed))
    report.ok += ok.num_rows
    report.audio_seconds += pc.sum(pc.fill_null(ok.column("duration_s"), 0.0)).as_py() or 0.0
    dropped = pc.fill_null(pc.greater(pc.utf8_length(ok.column("dropped_chars")), 0), False)
    report.dropped_chars_rows += pc.sum(dropped).as_py() or 0
    if "reading_notes" in ok.column_names:  # parts written before the column read it as nulls
        noted = pc.fill_null(pc.greater(pc.utf8_length(ok.column("reading_notes")), 0), False)
        report.reading_notes_rows += pc.sum(noted).as_py() or 0
    report.qc.add_columns(
        *(table.column(c).combine_chunks() for c in ("qc", "qc_flags", "qc_attempts", "asr_error_rate"))
    )
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
    _latest_engine(named.select(["worker", "engine"]), workers)


def _latest_engine(table: pa.Table, workers: dict[str, dict[str, Any]]) -> None:
    """Each worker's engine accounting from its row with the most engine steps (the counters are cumulative per
    actor, so that is the latest); parts from before the column existed have none."""
    table = table.filter(pc.is_valid(table.column("engine")))
    if table.num_rows == 0:
        return
    steps = pc.struct_field(table.column("engine"), "steps")
    latest = table.append_column("steps", steps).group_by("worker").aggregate([("steps", "max")])
    for name, most in zip(*(latest.column(c).to_pylist() for c in ("worker", "steps_max")), strict=True):
        held = workers[name].get("engine")
        if held is not None and held["steps"] >= most:
            continue
        mask = pc.and_(pc.equal(table.column("worker"), name), pc.equal(steps, most))
        workers[name]["engine"] = table.column("engine")[pc.index(mask, True).as_py()].as_py()


def write_status(output: str, status: dict[str, Any]) -> None:
    """Best effort: replace the running report with why the job stopped (the error itself is raised anyway)."""
    try:
        fs, base = filesystem(output)
        with fs.open_output_stream(f"{base}/_report.json") as f:
            f.write(json.dumps(status, ensure_ascii=False).encode() + b"\n")
    except (pa.ArrowException, OSError) as err:
        log.warning("could not record the job's failure in %s/_report.json: %s", output, err)
