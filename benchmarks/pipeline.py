"""Pipeline benchmark: Ray overhead of the whole offline job, scaling from 1 to 2 actors, and overlapping calls on
one actor, in one run.

    python benchmarks/pipeline.py [--rows 3200] [--model tiny] [--steps 160] [--parts overhead,scaling,overlap]
                                  [--overlap-rows 960] [--repeat 1] [--budget-mib N]
                                  [--out benchmarks/results/pipeline.json]

`--model full` runs the same on a random checkpoint of the real model's sizes (20-layer GPT), where a generated frame
costs the engine ~35x what it costs with the tiny model (1 thread) while Ray's per-row work stays the same, e.g.
    python benchmarks/pipeline.py --model full --rows 256 --steps 48 --batch-size 16 --parts overhead,scaling --repeat 2

1. engine alone: one Synthesizer in this process (1 torch thread) on the rows;
2. job, 1 actor: `raytts run` machinery on a local Ray, one actor with 1 CPU / 1 torch thread, same rows;
3. and 4. the same job with 1 and then 2 actors on one `ray.cluster_utils.Cluster` of two simulated GPU nodes
   (each one fake GPU for one engine actor; the head also has a CPU for the parse/store stages and the driver),
   so only the actor count differs; a short 2-actor warm-up job runs first, so both find the cluster's workers
   started. Torch sees no CUDA, so the actors run on the CPU with 1 thread each.
Every row generates exactly `--steps` frames (min = max new tokens), so all runs do identical model work.
Reported: audio-seconds per wall-second of each, 2 vs engine alone (Ray overhead) and 4 vs 3 (actor scaling), the
latter also in steady state: rows per second between 10% and 90% of the rows stored, sampled from the finished
Parquet parts, i.e. without a job's fixed costs (parsing, actor start-up, the last blocks). Each job's record also
has the seconds from its start to its first part, to 10% and 90% of its rows and to its last part, the machine's
busy cores, CPU-seconds and steal, and the engine actors' CPU-seconds. With `--repeat N` the 1- and 2-actor runs
are N back-to-back pairs; the ratios reported are the pairs' mean, each pair's with its CPU bound: the 1-actor
wall time over half the CPU-seconds the 2-actor run used (two saturated cores cannot do better).
5. and 6. (overlap) one actor on a local Ray, the first `--overlap-rows` rows at their natural lengths (EOS not
   masked, so rows end at different steps), with `actors.max_concurrent_batches` 1 and then 2: calls one at a time
   drain the engine's slots at the end of each call; two at once keep them full. Reported with engine occupancy.
Ray's usage-stats reporter and dashboard are off (RAY_USAGE_STATS_ENABLED=0, include_dashboard=False) in every run
so they do not compete for the 2 cores.
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

from benchmarks.jobmeter import job, round_or_none  # noqa: E402  (after the path: run as a script)


def _rows(n: int) -> list[dict]:
    from tests.support.jobdata import sentence

    return [{"id": f"r{i:05d}", "text": sentence(i), "seed": i} for i in range(n)]


def _job_config(
    model: str,
    text_file: Path,
    output: Path,
    steps: int,
    size: int,
    budget_mib: int,
    fake_gpus: bool = False,
    fixed_length: bool = True,
    concurrent: int = 2,
    batch_size: int = 64,
):
    from pipeline.config import JobConfig

    return JobConfig.model_validate(
        {
            "model": model,
            "inputs": {"text": [str(text_file)]},
            # One store actor keeps up with two CPU engine actors (it is ~5% busy): more would only add start-ups.
            "output": {"path": str(output), "audio_files": True, "writers": 1},
            "sampling": {"max_new_tokens": steps, "min_new_tokens": steps if fixed_length else 0, "temperature": 0.5},
            "engine": {"device": "cpu", "budget_mib": budget_mib, "max_slots": 32, "threads": 1},
            # On the fake-GPU cluster the GPU is what places one actor per node; an actor's CPU would be taken
            # from the parse/store tasks' logical CPUs and stall them (Ray Data waits for a free CPU forever).
            "actors": {
                "size": size,
                "num_gpus": 1 if fake_gpus else 0,
                "num_cpus": 0 if fake_gpus else 1,
                "batch_size": batch_size,
                "max_concurrent_batches": concurrent,
            },
        }
    )


def engine_alone(model: str, rows: list[dict], steps: int, budget_mib: int) -> dict:
    import torch

    from actors.engine.sampling import SamplingParams
    from actors.replica import Synthesizer
    from actors.requests import SynthesisRequest

    torch.set_num_threads(1)
    synth = Synthesizer(model=model, device="cpu", budget_mib=budget_mib, max_slots=32, max_new_tokens=steps)
    requests = [
        SynthesisRequest(id=r["id"], text=r["text"], params=SamplingParams(temperature=0.5, max_new_tokens=steps, min_new_tokens=steps, seed=r["seed"]))
        for r in rows
    ]  # fmt: skip
    started = time.perf_counter()
    results = synth.synthesize(requests)
    wall = time.perf_counter() - started
    audio = sum(r.audio.size for r in results if r.ok) / 24_000
    return {"system": "engine alone (1 thread)", "wall_s": wall, "audio_s": audio, "rows": len(results)}


def _pair_key(key: str, pair: int) -> str:
    """Results key of a scaling run: "one"/"two" for the first pair (the keys before `--repeat`), then "one-2", ..."""
    return key if pair == 0 else f"{key}-{pair + 1}"


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=3200)
    parser.add_argument(
        "--model",
        default="tiny",
        help="a model preset (tiny: the built-in model; full: a random checkpoint of the real ChatTTS sizes, written "
        "once under .cache/bench) or a checkpoint folder",
    )
    parser.add_argument("--steps", type=int, default=160)
    parser.add_argument(
        "--budget-mib", type=int, default=None, help="engine budget per actor (default: 256 for tiny, else 2048)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="rows per block and per actor call; with few rows use smaller blocks, so that work still spreads "
        "evenly when one actor starts before the other (Ray Data hands the first ready actor up to 3 blocks)",
    )
    parser.add_argument("--overlap-rows", type=int, default=960, help="rows of the overlap part")
    parser.add_argument("--repeat", type=int, default=1, help="1- and 2-actor pairs of the scaling part")
    parser.add_argument(
        "--parts",
        default="overhead,scaling,overlap",
        help="overhead = engine alone vs a 1-actor job on local Ray; scaling = 1 vs 2 actors on the 2-node cluster; "
        "overlap = 1 actor, rows of natural (mixed) lengths, 1 vs 2 calls at once on the actor",
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "pipeline.json")
    args = parser.parse_args()
    args.parts = set(args.parts.split(","))
    if not args.parts <= {"overhead", "scaling", "overlap"} or not args.parts:
        parser.error(f"--parts takes overhead, scaling and/or overlap, got {','.join(sorted(args.parts))!r}")
    if args.budget_mib is None:
        args.budget_mib = 256 if args.model == "tiny" else 2048
    return args


def _model_path(name: str) -> str:
    from actors.checkpoint import resolve
    from actors.model.config import PRESETS

    if name == "tiny":
        return str(resolve(name).asset.parent)
    if name in PRESETS:
        from benchmarks.engine import ensure_checkpoint

        return str(ensure_checkpoint(name, 0) / "asset")
    return name


def _overhead(args: argparse.Namespace, model: str, rows: list[dict], text_file: Path, work: Path) -> dict[str, dict]:
    """The engine alone, then the same rows as a 1-actor job on a local Ray."""
    import ray

    results = {"engine": engine_alone(model, rows, args.steps, args.budget_mib)}
    ray.init(address="local", num_cpus=4, include_dashboard=False)
    config = _job_config(model, text_file, work / "out1", args.steps, 1, args.budget_mib, batch_size=args.batch_size)
    results["local"] = job(config, "job, 1 actor (local Ray)")
    ray.shutdown()
    return results


def _scaling(args: argparse.Namespace, model: str, rows: list[dict], text_file: Path, work: Path) -> dict[str, dict]:
    """1 then 2 actors on a 2-node cluster with one fake GPU per node, `--repeat` pairs."""
    import ray
    from ray.cluster_utils import Cluster

    results = {}
    # Two nodes, one fake GPU each for one engine actor; the parse/store stages use the nodes' logical CPUs.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1, num_gpus=1)
    ray.init(address=cluster.address)
    cluster.wait_for_nodes()
    # A short 2-actor job first, so both measured runs find the same warm cluster: on a fresh one the first job's
    # parse and store workers start cold (measured: its parse took 3.95 s, the next job's 0.33 s), which made the
    # 1-actor run, always first, pay a start-up the 2-actor run did not.
    warm_file = work / "warm-up.jsonl"
    warm_file.write_text("".join(json.dumps(r) + "\n" for r in rows[:256]))
    job(_job_config(model, warm_file, work / "out-warm-up", 16, 2, args.budget_mib, True), "warm-up")
    # 1 then 2 actors, `--repeat` times: pairs run back to back, so a slow spell of this shared machine hits one
    # pair rather than one side of every comparison.
    for r in range(args.repeat):
        for size, key in ((1, "one"), (2, "two")):
            config = _job_config(
                model, text_file, work / f"out-cluster-{size}-{r}", args.steps, size, args.budget_mib, True,
                batch_size=args.batch_size,
            )  # fmt: skip
            name = f"job, {size} actor{'s' if size > 1 else ''} on the 2-node cluster"
            results[_pair_key(key, r)] = job(config, name + (f" (pair {r + 1})" if r else ""))
    ray.shutdown()
    cluster.shutdown()
    return results


def _overlap(args: argparse.Namespace, model: str, rows: list[dict], work: Path) -> dict[str, dict]:
    """Natural lengths (EOS not masked): a call's rows end at different steps, so with one call at a time its slots
    drain before the next call's rows arrive; with two, the next call's rows take the freed slots."""
    import ray

    results = {}
    mixed_file = work / "mixed.jsonl"
    mixed_file.write_text("".join(json.dumps(r) + "\n" for r in rows[: args.overlap_rows]))
    ray.init(address="local", num_cpus=4, include_dashboard=False)
    for concurrent, key in ((1, "mixed_one_call"), (2, "mixed_two_calls")):
        config = _job_config(
            model, mixed_file, work / f"out-mixed-{concurrent}", args.steps, 1, args.budget_mib,
            fixed_length=False, concurrent=concurrent,
        )  # fmt: skip
        calls = "1 call" if concurrent == 1 else f"{concurrent} calls"
        results[key] = job(config, f"job, 1 actor, mixed lengths, {calls} at once")
    ray.shutdown()
    return results


def _scaling_summary(results: dict[str, dict], repeat: int) -> dict:
    pairs = []
    for r in range(repeat):
        one, two = results[_pair_key("one", r)], results[_pair_key("two", r)]
        steady = one["steady_rows_per_s"] and two["steady_rows_per_s"]
        pair = {
            "whole": round(two["audio_s_per_s"] / one["audio_s_per_s"], 2),
            "steady": round_or_none(two["steady_rows_per_s"] / one["steady_rows_per_s"]) if steady else None,
        }
        if "cpu_s" in two:
            # Two saturated cores cannot finish the 2-actor run faster than all the CPU it used / 2; against the
            # 1-actor run that is the best ratio this machine allows, given what the non-engine processes took.
            pair["cpu_bound"] = round(one["wall_s"] / (two["cpu_s"] / 2), 2)
            pair["other_cpu_s"] = round(two["cpu_s"] - two["engine_cpu_s"], 1)
        pairs.append(pair)
        steady_text = f"{pair['steady']}x" if pair["steady"] is not None else "no"
        print(f"pair {r + 1}: 2 actors vs 1: {pair['whole']}x whole job, {steady_text} steady state", end="")
        if "cpu_bound" in pair:
            print(
                f"; CPU bound {pair['cpu_bound']}x (2-actor run: {two['busy_cores']} cores busy, engine actors "
                f"{two['engine_cpu_s']} CPU-s, everything else {pair['other_cpu_s']} CPU-s)",
                end="",
            )
        print()
    steady = [p["steady"] for p in pairs if p["steady"] is not None]
    summary = {
        "two_actor_speedup": round(sum(p["whole"] for p in pairs) / len(pairs), 2),
        "two_actor_steady_speedup": round_or_none(sum(steady) / len(steady)) if steady else None,
        "pairs": pairs,
    }
    steady_text = f"{summary['two_actor_steady_speedup']}x" if steady else "no"
    print(
        f"2 actors vs 1 (mean of {len(pairs)} pair{'s' if len(pairs) > 1 else ''}): "
        f"{summary['two_actor_speedup']}x whole job, {steady_text} steady state"
    )
    return summary


def _report(args: argparse.Namespace, results: dict[str, dict]) -> None:
    """Prints the table and the ratios; writes the JSON."""
    for r in results.values():
        r["audio_s_per_s"] = round(r["audio_s"] / r["wall_s"], 2)
        r["wall_s"] = round(r["wall_s"], 2)
        r["audio_s"] = round(r["audio_s"], 2)
    header = ["system", "rows", "wall_s", "audio_s", "audio_s_per_s", "steady_rows_per_s", "occupancy", "busy_cores"]
    header += ["cpu_s", "engine_cpu_s", "steal_s"]
    print(" | ".join(header))
    for r in results.values():
        print(" | ".join(str(r.get(h, "-")) for h in header))
    summary: dict = {}
    if "overhead" in args.parts:
        summary["ray_overhead"] = round(1 - results["local"]["audio_s_per_s"] / results["engine"]["audio_s_per_s"], 3)
        print(f"Ray overhead vs engine alone: {summary['ray_overhead'] * 100:.1f}%")
    if "scaling" in args.parts:
        summary.update(_scaling_summary(results, args.repeat))
    if "overlap" in args.parts:
        one, two = results["mixed_one_call"], results["mixed_two_calls"]
        # per-row seeds: the same rows give the same audio however they share the engine's steps
        assert one["audio_s"] == two["audio_s"], (one["audio_s"], two["audio_s"])
        summary["overlap_speedup"] = round(two["audio_s_per_s"] / one["audio_s_per_s"], 2)
        print(
            f"mixed lengths, 2 calls at once vs 1: {summary['overlap_speedup']}x "
            f"(engine occupancy {one['occupancy']:.0%} -> {two['occupancy']:.0%})"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {"rows": args.rows, "steps": args.steps, "model": args.model, "batch_size": args.batch_size}
    record["results"] = list(results.values())
    args.out.write_text(json.dumps({**record, **summary}, indent=2) + "\n")
    print(f"wrote {args.out}")


def main() -> None:
    args = _parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    work = Path(tempfile.mkdtemp(prefix="raytts-bench-"))
    rows = _rows(args.rows)
    text_file = work / "rows.jsonl"
    text_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = _model_path(args.model)
    os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="rb", dir="/tmp")
    results: dict[str, dict] = {}
    if "overhead" in args.parts:
        results.update(_overhead(args, model, rows, text_file, work))
    if "scaling" in args.parts:
        results.update(_scaling(args, model, rows, text_file, work))
    if "overlap" in args.parts:
        results.update(_overlap(args, model, rows, work))
    _report(args, results)


if __name__ == "__main__":
    main()
