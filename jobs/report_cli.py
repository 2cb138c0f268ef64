"""`raytts report OUTPUT`: the static listening page of a job's output (`pipeline.listening`)."""

from __future__ import annotations

import argparse
import sys

from pipeline.listening import PER_FLAG, write_page


def add_report_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="write OUTPUT/report.html: a static listening page of a job's output (flags, histograms, players)",
        description="Reads OUTPUT's Parquet parts (local folder or s3://...) one at a time and writes OUTPUT/"
        "report.html: flag counts, histograms of the quality measures, the worst rows of each flag and a sample of "
        "clean rows with audio players, the first failed rows, filters by flag, speaker and language. No server: "
        "open the file, or serve or copy the output folder whole (players link audio/ relatively). `raytts run` "
        "writes it at the end of every job.",
    )
    p.add_argument("output", help="a job's output folder or URI (the `output.path` of its job file)")
    p.add_argument("--per-flag", type=int, default=PER_FLAG, help="rows shown per flag and clean rows sampled")


def report(args: argparse.Namespace) -> int:
    if args.per_flag < 1:
        print(f"raytts report: --per-flag must be 1 or more, got {args.per_flag}", file=sys.stderr)
        return 2
    try:
        page, listening = write_page(args.output, args.per_flag)
    except OSError as err:
        print(f"raytts report: cannot write the listening page of {args.output}: {err}", file=sys.stderr)
        return 2
    if listening.rows == 0:
        print(f"raytts report: {args.output} holds no output rows (no readable parts under {args.output}/parts); "
              f"wrote an empty page to {page}", file=sys.stderr)  # fmt: skip
        return 1
    print(f"listening page: {page} ({listening.rows} rows, {listening.summary.flagged} flagged, "
          f"{len(listening.shown())} with players)")  # fmt: skip
    return 0
