"""Quality-check benchmark: each detector's hit rate on constructed rows with its fault, the flags raised on clean
rows (false alarms), and what measuring costs per row and per audio second on one core.

    python benchmarks/quality.py [--rows 300] [--seed 7] [--out benchmarks/results/quality.json]

Rows come from `benchmarks/quality_faults.py` (speech-like audio and model-like codes; each fault applied to its
own clean row). The default thresholds (`actors.quality.QualityPolicy`) decide the flags. Prints two tables and
writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from actors.model.config import SAMPLE_RATE  # noqa: E402
from actors.quality import FLAGS, QualityPolicy, measure  # noqa: E402
from benchmarks.quality_faults import FAULTS, clean  # noqa: E402


def run(rows: int, seed: int) -> dict:
    policy = QualityPolicy()
    rng = np.random.default_rng(seed)
    clean_flags: Counter = Counter()
    seconds = audio_seconds = 0.0
    flagged_clean = 0
    for _ in range(rows):
        audio, codes, text, truncated = clean(rng)
        started = time.perf_counter()
        flags = policy.flags(measure(audio, codes, text, truncated))
        seconds += time.perf_counter() - started
        audio_seconds += audio.size / SAMPLE_RATE
        clean_flags.update(flags)
        flagged_clean += bool(flags)
    faults = {}
    for name, (flag, make) in FAULTS.items():
        hits, others = 0, Counter()
        for _ in range(rows):
            audio, codes, text, truncated = make(clean(rng), rng)
            flags = policy.flags(measure(audio, codes, text, truncated))
            hits += flag in flags
            others.update(f for f in flags if f != flag)
        faults[name] = {"flag": flag, "hit_rate": hits / rows, "other_flags": dict(others)}
    return {
        "rows_per_case": rows,
        "clean": {"flagged_share": flagged_clean / rows, "flags": {f: clean_flags[f] / rows for f in FLAGS}},
        "faults": faults,
        "cost": {
            "ms_per_row": 1000 * seconds / rows,
            "ms_per_audio_second": 1000 * seconds / audio_seconds,
            "mean_row_seconds": audio_seconds / rows,
        },  # fmt: skip
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = run(args.rows, args.seed)
    print(f"{'fault':<28}{'flag':<15}{'hit rate':>9}  other flags raised")
    for name, f in result["faults"].items():
        other = ", ".join(f"{k} {v}" for k, v in f["other_flags"].items()) or "-"
        print(f"{name:<28}{f['flag']:<15}{f['hit_rate']:>9.1%}  {other}")
    print(f"\nclean rows flagged: {result['clean']['flagged_share']:.1%} of {args.rows}")
    for flag, share in result["clean"]["flags"].items():
        print(f"  {flag:<15}{share:>7.1%}")
    cost = result["cost"]
    print(f"\nmeasuring: {cost['ms_per_row']:.2f} ms per row ({cost['mean_row_seconds']:.1f} s of audio), "
          f"{cost['ms_per_audio_second']:.3f} ms per audio second, one core")  # fmt: skip
    if args.out:
        meta = {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()}
        args.out.write_text(json.dumps({"meta": meta, **result}, indent=1))


if __name__ == "__main__":
    main()
