"""Driver bookkeeping of a big offline job: what the driver itself spends on N rows, without synthesis.

    python benchmarks/bookkeeping.py [--rows 1000000] [--shards 10] [--out benchmarks/results/bookkeeping.json]

The job's driver parses nothing itself, but it keeps the books: it collects every input row's key from the parsed
blocks, finds duplicate ids, reads the keys of rows that earlier runs finished, counts what is left to do, and at
the end reads every output part for the report, the per-worker table and `manifest.jsonl`. All of that grows with
the job's rows, so at millions of rows it decides the head node's memory and the time before the first row reaches
an actor and after the last one is stored.

This benchmark measures exactly that path with the real `run_job` on a local Ray: `--rows` input rows in
`--shards` JSONL shards, and an output folder whose parts (1000 rows each, written by `pipeline.parts.write_part`
with the keys and digests the job computes, 1% of them failed rows, no audio files) already hold every row, as
after a finished run. Re-running the job then does all of the
bookkeeping and no synthesis. Reported: wall time of the re-run, the driver's peak resident memory above its
resident memory just before the job (after `ray.init`), and both per million rows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ROWS_PER_PART = 1000
TEXT = "The quick brown fox jumps over the lazy dog, and then it runs back again."


def _code_version() -> str:
    """The commit the driver's code came from (with -dirty when the tree has changes)."""
    import subprocess

    done = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


class _Sampler:
    """Peaks of the driver's private (RssAnon), file-backed (RssFile) and shared (RssShmem: object-store pages it
    touched, which the object store owns and bounds) resident memory, sampled every 20 ms on a thread."""

    FIELDS = ("RssAnon", "RssFile", "RssShmem")

    def __init__(self) -> None:
        import threading

        self.peaks = dict.fromkeys(self.FIELDS, 0)
        self.disk_peak = 0  # bytes
        self._ticks = 0
        self.before = {f: _status_kib(f) for f in self.FIELDS}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            for f in self.FIELDS:
                self.peaks[f] = max(self.peaks[f], _status_kib(f))
            self._ticks += 1
            if self._ticks % 25 == 0:  # the folder every 0.5 s
                self.disk_peak = max(self.disk_peak, _books_disk())

    def stop(self) -> dict[str, float]:
        """Peak growth above the start, MiB, per field."""
        self._stop.set()
        self._thread.join()
        return {f: round(max(0, self.peaks[f] - self.before[f]) / 1024) for f in self.FIELDS}


def _books_disk() -> int:
    """Bytes in the ledgers' database folders (`pipeline.ledger`: raytts-books-* in the temporary folder)."""
    total = 0
    for folder in Path(tempfile.gettempdir()).glob("raytts-books-*"):
        for path in folder.rglob("*"):
            try:
                total += path.stat().st_size if path.is_file() else 0
            except FileNotFoundError:
                continue
    return total


def _reset_peak() -> None:
    """Linux: writing 5 to clear_refs resets VmHWM (the peak resident set) to the current resident set."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def write_inputs(root: Path, rows: int, shards: int, job_digest: str) -> tuple[Path, Path]:
    """`rows` rows in `shards` JSONL shards, and an output folder whose parts already hold every row (keyed and
    digested as the job computes it, so the re-run finds them finished)."""
    import pyarrow as pa

    from pipeline.identity import input_digest
    from pipeline.parts import RUN_SCHEMA, write_part

    digest = input_digest(TEXT, {}, {}, None)
    texts, output = root / "texts", root / "out"
    texts.mkdir(parents=True)
    per_shard = -(-rows // shards)
    keys: list[tuple[str, str]] = []
    for s in range(shards):
        path = texts / f"shard-{s:03d}.jsonl"
        count = min(per_shard, rows - s * per_shard)
        lines = [json.dumps({"id": f"utt-{s:03d}-{i:07d}", "text": TEXT}) + "\n" for i in range(count)]
        path.write_text("".join(lines))
        keys.extend((f"utt-{s:03d}-{i:07d}", f"texts/{path.name}:{i + 1}") for i in range(count))
    audio = b"\0" * 256
    for start in range(0, rows, ROWS_PER_PART):
        chunk = keys[start : start + ROWS_PER_PART]
        n = len(chunk)
        failed = [start + i for i in range(n) if (start + i) % 100 == 0]
        errors = [
            f"{source}: synthetic failure" if start + i in failed else None for i, (_, source) in enumerate(chunk)
        ]
        ok = [e is None for e in errors]
        columns = {f.name: [None] * n for f in RUN_SCHEMA}
        columns.update(
            id=[k for k, _ in chunk],
            key=[k for k, _ in chunk],
            input_digest=[digest] * n,
            job_digest=[job_digest] * n,
            text=[TEXT] * n,
            audio=[
                {"bytes": audio, "path": f"{output}/audio/{k}.flac"} if o else None
                for (k, _), o in zip(chunk, ok, strict=True)
            ],
            sample_rate=[24000 if o else None for o in ok],
            num_samples=[72000 if o else None for o in ok],
            duration_s=[3.0 if o else None for o in ok],
            seed=[1] * n,
            model=["tiny"] * n,
            error=errors,
            source=[s for _, s in chunk],
            worker=[f"node{(start // ROWS_PER_PART) % 4}/pid1" if o else None for o in ok],
            engine_occupancy=[0.9 if o else None for o in ok],
        )
        write_part(pa.Table.from_pydict(columns, schema=RUN_SCHEMA), str(output / "parts"))
    return texts, output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=10)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bookkeeping.json")
    args = parser.parse_args()

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="rk", dir="/tmp")
    import ray

    from actors.checkpoint import resolve
    from actors.text import front_end_version
    from pipeline.config import JobConfig
    from pipeline.identity import job_digest, job_settings
    from pipeline.job import run_job

    root = Path(tempfile.mkdtemp(prefix="raytts-bookkeeping-"))
    config = JobConfig.model_validate({
        "model": str(resolve("tiny").asset.parent),
        "inputs": {"text": [str(root / "texts")], "base": str(root)},
        "output": {"path": str(root / "out"), "audio_files": False},
        "actors": {"size": 1, "num_gpus": 0, "num_cpus": 1},
        "engine": {"device": "cpu"},
    })  # fmt: skip
    settings = job_settings(config, resolve(config.model).sha256, front_end_version(config.normalize))
    started = time.perf_counter()
    texts, output = write_inputs(root, args.rows, args.shards, job_digest(settings, None))
    print(
        f"wrote {args.rows} rows in {args.shards} shards and their finished parts in {time.perf_counter() - started:.1f} s"
    )

    ray.init(address="local", num_cpus=4, include_dashboard=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    before_kib = _status_kib("VmRSS")
    _reset_peak()
    sampler = _Sampler()
    started = time.perf_counter()
    report = run_job(config)
    wall = time.perf_counter() - started
    peak_kib = _status_kib("VmHWM")
    growth_by_kind = sampler.stop()
    ray.shutdown()

    expected_failed = len(range(0, args.rows, 100))
    if (report.rows, report.skipped_finished, report.this_run, report.failed) != (
        args.rows, args.rows, 0, expected_failed
    ):  # fmt: skip
        raise SystemExit(f"the re-run's report does not match its input: {report.to_dict() | {'failures': '...'}}")
    manifest = (output / "manifest.jsonl").stat().st_size
    growth_mib = max(0, peak_kib - before_kib) / 1024
    record = {
        "command": "python benchmarks/bookkeeping.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} cores",
        "code": _code_version(),
        "rows": args.rows,
        "shards": args.shards,
        "parts": -(-args.rows // ROWS_PER_PART),
        "failed_rows": report.failed,
        "rerun_wall_s": round(wall, 2),
        "driver_rss_before_mib": round(before_kib / 1024),
        "driver_peak_growth_mib": round(growth_mib),
        "wall_s_per_million_rows": round(wall / args.rows * 1e6, 2),
        "driver_mib_per_million_rows": round(growth_mib / args.rows * 1e6),
        "driver_peak_growth_mib_by_kind": growth_by_kind,
        "books_disk_peak_mib": round(sampler.disk_peak / 2**20),
        "manifest_bytes": manifest,
    }
    print(f"{'rows':>10} {'re-run wall s':>14} {'driver peak growth MiB':>23} {'MiB per 1M rows':>16}  by kind")
    print(
        f"{args.rows:>10} {record['rerun_wall_s']:>14} {record['driver_peak_growth_mib']:>23}"
        f" {record['driver_mib_per_million_rows']:>16}  {growth_by_kind}, books on disk {record['books_disk_peak_mib']} MiB"
    )
    import shutil

    shutil.rmtree(root, ignore_errors=True)  # the inputs and output (GBs at 10^7 rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
