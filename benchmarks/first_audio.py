"""Time to first audio of a fresh offline job against its input size: how long a new `raytts run` takes before its
first row is stored, and how much of that is reading the whole input first.

    python benchmarks/first_audio.py [--rows 10000,1000000] [--out benchmarks/results/first_audio.json]

Each size runs `raytts run` as a user would (its own process and local Ray, the built-in tiny model, a local output
folder, defaults otherwise) on `--rows` JSONL rows in 10 shards, and is stopped (SIGINT, then its process group is
killed) once the first Parquet part appears. Reported per size: seconds from the command's start to the first part,
and to the driver's "parsed N input rows" line (the books need every row's identity before synthesis starts).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEXT = "The quick brown fox jumps over the lazy dog, and then it runs back again."


def _write_inputs(folder: Path, rows: int, shards: int = 10) -> None:
    folder.mkdir(parents=True)
    per_shard = -(-rows // shards)
    for s in range(shards):
        count = min(per_shard, rows - s * per_shard)
        with open(folder / f"shard-{s:03d}.jsonl", "w") as f:
            f.writelines(json.dumps({"id": f"u{s:03d}-{i:07d}", "text": TEXT}) + "\n" for i in range(count))


def measure(rows: int, timeout: float) -> dict[str, float | int | None]:
    root = Path(tempfile.mkdtemp(prefix="raytts-first-audio-"))
    _write_inputs(root / "texts", rows)
    output = root / "out"
    env = {
        **os.environ,
        "RAY_TMPDIR": tempfile.mkdtemp(prefix="fa", dir="/tmp"),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "jobs.cli", "run", "--input", str(root / "texts"), "--output", str(output)]
    log = open(root / "driver.log", "w")
    started = time.perf_counter()
    driver = subprocess.Popen(command, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    first = None
    try:
        while time.perf_counter() - started < timeout and driver.poll() is None:
            if any((output / "parts").glob("part-*.parquet")) if (output / "parts").exists() else False:
                first = time.perf_counter() - started
                break
            time.sleep(0.1)
    finally:
        if driver.poll() is None:
            driver.send_signal(signal.SIGINT)
            try:
                driver.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(driver.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        log.close()
    text = (root / "driver.log").read_text(errors="replace")
    parsed = re.search(r"parsed (\d+) input rows in ([0-9.]+) s", text)
    if first is None:
        print(f"no part within {timeout:.0f} s at {rows} rows; the driver's log ends:\n{text[-3000:]}")
    subprocess.run(["rm", "-rf", str(root)], check=False)
    return {"rows": rows, "first_part_s": None if first is None else round(first, 1),
            "parsed_s": float(parsed.group(2)) if parsed else None}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="10000,1000000")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "first_audio.json")
    args = parser.parse_args()
    results = [measure(int(n), args.timeout) for n in args.rows.split(",")]
    print(f"{'rows':>10} {'first part s':>13} {'parse of the whole input s':>27}")
    for r in results:
        print(f"{r['rows']:>10} {r['first_part_s']!s:>13} {r['parsed_s']!s:>27}")
    record = {"command": "python benchmarks/first_audio.py " + " ".join(sys.argv[1:]), "date": time.strftime("%Y-%m-%d"),
              "machine": f"{os.cpu_count()} cores", "results": results}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
