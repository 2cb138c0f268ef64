"""Decode-step benchmark: wall time per engine step against rows in flight, and where a step's time goes.

One `ContinuousBatcher` per row count on a random checkpoint (`tiny` by default: 2 layers, hidden 128, so its
arithmetic costs next to nothing and a step's time is the engine's host work; `full` for the real sizes). Every row
is held to the same length (min = max new tokens), so each timed step carries exactly `rows` live rows. After the
rows are admitted and prefilled, `--steps` decode steps are timed one by one; the median is reported. For the row
counts in `--profile-rows`, torch's profiler records a few more steps and the table splits their time into the
operators' own time by kind (weight matrix products, attention with its KV gathers, sampling, other tensor ops) and what is left: Python,
scheduling and dispatch, the host work that a GPU cannot hide at small model cost. Prints a table, writes JSON.

    python benchmarks/step.py [--preset tiny|full] [--rows 1,8,32,64,128,256] [--steps 40]
        [--profile-rows 64,256] [--threads 2] [--out benchmarks/results/step-cpu-tiny.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from actors.checkpoint import load_model  # noqa: E402
from actors.checkpoint.random_weights import write_checkpoint  # noqa: E402
from actors.engine.batcher import ContinuousBatcher  # noqa: E402
from actors.engine.memory import plan_slots  # noqa: E402
from actors.engine.params import SamplingParams  # noqa: E402
from actors.engine.prompt import CodePrompt  # noqa: E402
from actors.text import decorate  # noqa: E402
from actors.tokenizer import TextTokenizer  # noqa: E402

# Operator names by kind (torch's profiler names, self CPU time); anything else is "other ops".
# The GPT's projections and heads run as mm/addmm; attention as bmm and softmax over the KV blocks that
# index_select gathers (index_select also serves embedding lookups, a small share).
KINDS = {
    "weights matmul (mm, addmm)": ("aten::mm", "aten::addmm", "aten::matmul", "aten::linear"),
    "attention (bmm, softmax, KV gathers)": (
        "aten::bmm",
        "aten::baddbmm",
        "aten::_scaled_dot_product",
        "aten::scaled_dot_product",
        "aten::_softmax",
        "aten::softmax",
        "aten::index_select",
    ),  # fmt: skip
    "sampling": ("aten::multinomial", "aten::topk", "aten::sort", "aten::cumsum", "aten::exponential", "aten::argmax"),
}
TEXT = "one two three four five six seven eight nine ten eleven twelve."


def _kind(name: str) -> str:
    for kind, prefixes in KINDS.items():
        if name.startswith(prefixes):
            return kind
    return "other ops"


def _batcher(model, tokenizer: TextTokenizer, rows: int, steps: int) -> ContinuousBatcher:
    """A batcher holding `rows` live rows, admitted and prefilled, each with `steps` decode steps left."""
    prompt = CodePrompt(tokenizer.encode(decorate(TEXT, "[speed_5]", False)))
    new_tokens = steps + 8
    plan = plan_slots(model.config, torch.float32, 8 << 30, prompt.length, new_tokens, max_slots=rows)
    if plan.slots < rows:
        raise SystemExit(f"a {rows}-row pool does not fit 8 GiB for this model (planned {plan.slots} slots)")
    batcher = ContinuousBatcher(model, plan, tokenizer.spk_emb_id)
    for i in range(rows):
        batcher.submit(i, prompt, SamplingParams(temperature=0.3, min_new_tokens=new_tokens,
                                                 max_new_tokens=new_tokens, seed=i))  # fmt: skip
    while batcher.queued_rows or batcher.stats.steps < 2:  # admission and prefill, then two decode steps
        batcher.step()
    if batcher.running_rows != rows:
        raise SystemExit(f"expected {rows} rows in flight, found {batcher.running_rows}")
    return batcher


def time_steps(model, tokenizer: TextTokenizer, rows: int, steps: int) -> dict:
    batcher = _batcher(model, tokenizer, rows, steps)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        batcher.step()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"rows": rows, "steps": steps, "median_ms": round(median * 1e3, 3),
            "p90_ms": round(sorted(times)[int(0.9 * (len(times) - 1))] * 1e3, 3),
            "us_per_row": round(median * 1e6 / rows, 1)}  # fmt: skip


def profile_steps(model, tokenizer: TextTokenizer, rows: int, steps: int) -> dict:
    """Operators' own CPU time by kind over `steps` decode steps, and the rest of the wall time (host work)."""
    batcher = _batcher(model, tokenizer, rows, steps)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            batcher.step()
        wall = time.perf_counter() - start
    by_kind: dict[str, float] = {}
    ops: dict[str, tuple[float, int]] = {}
    for event in prof.key_averages():
        if not event.key.startswith("aten::"):
            continue
        seconds = event.self_cpu_time_total / 1e6
        by_kind[_kind(event.key)] = by_kind.get(_kind(event.key), 0.0) + seconds
        ops[event.key] = (seconds, event.count)
    per_step = {kind: round(seconds * 1e3 / steps, 3) for kind, seconds in sorted(by_kind.items())}
    per_step["host (python, scheduling, dispatch)"] = round((wall - sum(by_kind.values())) * 1e3 / steps, 3)
    top = sorted(ops.items(), key=lambda item: -item[1][0])[:12]
    return {"rows": rows, "steps": steps, "wall_ms_per_step_profiled": round(wall * 1e3 / steps, 3),
            "ms_per_step_by_kind": per_step,
            "aten_calls_per_step": round(sum(count for _, count in ops.values()) / steps, 1),
            "top_ops_ms_per_step": {name: round(s * 1e3 / steps, 3) for name, (s, _) in top}}  # fmt: skip


def _machine(threads: int) -> dict:
    flags = set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                flags = {f for f in line.split(":", 1)[1].split() if f.startswith(("avx", "amx", "fma", "f16c"))}
                break
    return {"cpu": platform.processor() or platform.machine(), "model_name": _model_name(), "flags": sorted(flags),
            "threads": threads, "torch": torch.__version__}  # fmt: skip


def _model_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=("tiny", "full"))
    parser.add_argument("--rows", default="1,8,32,64,128,256")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--profile-rows", default="64,256")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="raytts-step-") as root:
        asset = write_checkpoint(root, args.preset, 0)
        model = load_model(asset)
        tokenizer = TextTokenizer(asset / "tokenizer", model.config.gpt.num_text_tokens)
        timed = [time_steps(model, tokenizer, int(n), args.steps) for n in args.rows.split(",")]
        profiled = [profile_steps(model, tokenizer, int(n), 10) for n in args.profile_rows.split(",") if n]
    print(f"decode step, {args.preset} checkpoint, float32, {args.threads} threads")
    print("rows | median ms | p90 ms | us per row")
    for row in timed:
        print(f"{row['rows']:>4} | {row['median_ms']:>9} | {row['p90_ms']:>6} | {row['us_per_row']}")
    for prof in profiled:
        print(f"\n{prof['rows']} rows, profiled ({prof['aten_calls_per_step']} aten calls per step):")
        for kind, ms in prof["ms_per_step_by_kind"].items():
            print(f"  {kind:<40} {ms:>9} ms/step")
    result = {"preset": args.preset, "dtype": "float32", "machine": _machine(args.threads), "timed": timed,
              "profiled": profiled}  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
