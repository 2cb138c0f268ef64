"""`raytts run`: its flags (config overrides) and its output (the report as JSON on stdout, a table on stderr)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import from_cwd, listening_page, overrides_from, print_failures


def add_run_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="the offline job: Ray Data from text/speaker shards to Parquet and audio objects (resumable)",
        description="Runs CONFIG (YAML, see jobs/examples/job.yaml) on local Ray, or on --address. Re-running the "
        "same config after a crash or an edit of the inputs or settings redoes only what changed. Exit status: 0 all "
        "rows ok; 1 rows failed, an input problem, or the output does not hold every input row once; 2 the job could "
        "not start (config, output, model, another driver on the output); 3 another driver took the output over; 130 "
        "interrupted (Ctrl-C).",
    )
    p.add_argument("config", type=Path, nargs="?", default=None, help="job YAML (flags below override it)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--input", action="append", default=None, help="text shard/folder/glob (repeatable)")
    p.add_argument("--speakers", action="append", default=None, help="reference-speaker shard (repeatable)")
    p.add_argument("--output", default=None, help="output folder or URI")
    p.add_argument("--model", default=None)
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override any config field, e.g. --set actors.size=2 --set sampling.temperature=0.5 (YAML values)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from pipeline.config import JobConfig
    from pipeline.job import LeaseLost, ModelUnusable, OutputBusy, OutputUnusable, PoolDoesNotFit, run_job

    overrides = overrides_from("run", args.set)
    if overrides is None:
        return 2
    # Paths given as flags are relative to where the command runs (paths in the YAML: to the YAML's folder).
    if args.input:
        overrides["inputs.text"] = [from_cwd(p) for p in args.input]
    if args.speakers:
        overrides["inputs.speakers"] = [from_cwd(p) for p in args.speakers]
    if args.output:
        overrides["output.path"] = from_cwd(args.output)
    if args.model:
        overrides["model"] = from_cwd(args.model)
    try:
        config = JobConfig.load(args.config, overrides)
    except (ValidationError, ValueError, OSError) as err:
        print(f"raytts run: invalid job config: {err}", file=sys.stderr)
        return 2
    try:
        report = run_job(config, address=args.address, quiet=not args.verbose)
    except (PoolDoesNotFit, OutputUnusable, ModelUnusable, OutputBusy, OSError) as err:
        print(f"raytts run: {err}", file=sys.stderr)
        return 2
    except LeaseLost as err:
        print(f"raytts run: {err}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"raytts run: interrupted; {config.output.path}/_report.json says so, and running the same command "
              f"again finishes the job (finished rows are kept)", file=sys.stderr)  # fmt: skip
        return 130
    summary = report.to_dict()
    failures = summary.pop("failures")
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    print(report_table(summary), file=sys.stderr)
    for problem in report.problems:
        print(f"INPUT PROBLEM {problem}", file=sys.stderr)
    print_failures(failures, f"{report.output}/_report.json")
    listening_page(report.output)
    return report.exit_status


def report_table(summary: dict) -> str:
    """The job report as aligned text: totals, then one line per engine worker."""
    lines = [
        f"rows {summary['rows']}  ok {summary['ok']}  failed {summary['failed']}  this run {summary['this_run']}  "
        f"skipped (finished earlier) {summary['skipped_finished']}",
        f"audio {summary['audio_seconds']:.1f} s ({summary['audio_seconds_this_run']:.1f} s this run)  wall "
        f"{summary['wall_seconds']:.1f} s  audio-seconds per second {summary['audio_seconds_per_second']:.2f}",
    ]
    if summary.get("dropped_chars_rows"):
        lines.append(
            f"{summary['dropped_chars_rows']} ok rows lost characters the model cannot say (see their dropped_chars "
            f"and spoken_text columns)"
        )
    qc = summary.get("qc") or {}
    if qc.get("rows_flagged"):
        counts = ", ".join(f"{name} {count}" for name, count in qc["flags"].items() if count)
        lines.append(
            f"{qc['rows_flagged']} of {qc['rows_measured']} rows raised quality flags ({counts}): see their qc_flags "
            f"and qc columns"
        )
    if summary.get("reading_notes_rows"):
        lines.append(
            f"{summary['reading_notes_rows']} ok rows were read by a replacement or a guess (an ambiguous date: see "
            f"their reading_notes column)"
        )
    workers = summary["workers"]
    if workers:
        width = max(len("worker"), *(len(name) for name in workers))
        head = f"{'worker':<{width}}  {'rows':>8}  {'audio s':>10}  {'occupancy':>9}"
        lines.append(f"{head}  {'in flight':>9}  {'read eff':>8}  {'KV held':>7}  {'preempted':>9}")
        for name, w in workers.items():
            line = f"{name:<{width}}  {w['rows']:>8}  {w['audio_seconds']:>10.1f}  {w['occupancy']:>9.2f}"
            e = w.get("engine")
            if e:  # the engine's latest accounting (see actors.tts_stage.ENGINE_ACCOUNTING)
                line += f"  {e['max_rows_in_flight']:>9}  {e['attention_read_efficiency']:>8.2f}"
                line += f"  {e['kv_held_share']:>7.2f}  {e['preemptions']:>9}"
            lines.append(line)
    return "\n".join(lines)
