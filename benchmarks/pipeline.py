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
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


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
    synth = Synthesizer(
        model=model, device="cpu", budget_bytes=budget_mib << 20, max_batch_size=32, max_new_tokens=steps
    )
    requests = [
        SynthesisRequest(id=r["id"], text=r["text"], params=SamplingParams(temperature=0.5, max_new_tokens=steps, min_new_tokens=steps, seed=r["seed"]))
        for r in rows
    ]  # fmt: skip
    started = time.perf_counter()
    results = synth.synthesize(requests)
    wall = time.perf_counter() - started
    audio = sum(r.audio.size for r in results if r.ok) / 24_000
    return {"system": "engine alone (1 thread)", "wall_s": wall, "audio_s": audio, "rows": len(results)}


# The engine actors' process titles: "ray::MapWorker(MapBatches(TTSStage))", or on a CPU-only pool, where Ray Data
# fuses the prepare tasks into the actors (same resources), "ray::MapWorker(MapBatches(prepare_rows)->MapBatches(...".
ENGINE_PROCESS = (
    "ray::MapWorker(MapBatches(TTSStage))",
    "ray::MapWorker(MapBatches(prepare_rows)->MapBatches(TTSStage))",
)


class PartsMonitor(threading.Thread):
    """Samples (time, rows stored) from the job's finished Parquet parts, which appear by atomic rename."""

    def __init__(self, parts: Path) -> None:
        super().__init__(daemon=True)
        self.parts = parts
        self.samples: list[tuple[float, int]] = []
        self.seen: dict[str, int] = {}
        self.engine_cpu: dict[int, float] = {}  # pid -> CPU-seconds of each engine actor process, last seen
        # engine actors of an earlier job can still be exiting when this one starts: count only what they add
        self.engine_cpu_before = _process_cpu(ENGINE_PROCESS)
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.5):
            self.sample()
        self.sample()  # the parts written in the job's last half second

    def sample(self) -> None:
        import pyarrow.parquet as pq

        for path in self.parts.glob("part-*.parquet") if self.parts.exists() else []:
            if path.name not in self.seen:
                self.seen[path.name] = pq.ParquetFile(path).metadata.num_rows
        self.samples.append((time.perf_counter(), sum(self.seen.values())))
        self.engine_cpu.update(_process_cpu(ENGINE_PROCESS))

    def steady_rows_per_s(self, low: float = 0.1, high: float = 0.9) -> float | None:
        """Rows per second between the first samples at `low` and `high` of the total: the rate once the job runs,
        without its fixed costs (parsing, actor start-up, the last blocks)."""
        total = self.samples[-1][1]
        t0, r0 = next((t, r) for t, r in self.samples if r >= low * total)
        t1, r1 = next((t, r) for t, r in self.samples if r >= high * total)
        return (r1 - r0) / (t1 - t0) if t1 > t0 else None  # a job of a part or two has no steady state

    def engine_cpu_s(self) -> float:
        return sum(cpu - self.engine_cpu_before.get(pid, 0.0) for pid, cpu in self.engine_cpu.items())

    def phases(self, started: float) -> dict[str, float]:
        """Seconds from the job's start to its first stored part, to 10% and 90% of the rows, and to the last part:
        where a whole-job ratio loses against the steady-state one."""
        total = self.samples[-1][1]
        first = lambda share: next(t for t, r in self.samples if r >= max(1, share * total)) - started  # noqa: E731
        return {"first_part_s": first(0), "p10_s": first(0.1), "p90_s": first(0.9), "last_part_s": first(1.0)}


def _process_cpu(prefixes: tuple[str, ...]) -> dict[int, float]:
    """pid -> user + system CPU-seconds of the processes whose command line starts with one of `prefixes` (Linux
    /proc)."""
    found = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if not f.read(200).decode(errors="replace").startswith(prefixes):
                    continue
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # the process ended between listing and reading
            continue
        found[int(entry)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return found


def _machine_cpu() -> list[float]:
    """Seconds the machine's CPUs spent (user, nice, system, idle, iowait, irq, softirq, steal) since boot."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:9]
    except OSError:  # not Linux: no machine accounting
        return []
    return [int(v) / os.sysconf("SC_CLK_TCK") for v in fields]


def _cpu_use(before: list[float], after: list[float], wall: float) -> dict[str, float]:
    """Cores busy on average over the job, and CPU-seconds the hypervisor took away (steal): a job that ran with
    fewer busy cores or more steal than its twin was not measured under the same conditions."""
    if not before or not after:
        return {}
    spent = [b - a for a, b in zip(before, after, strict=True)]
    busy = sum(spent[:3]) + sum(spent[5:7])
    return {"busy_cores": round(busy / wall, 2), "cpu_s": round(busy, 1), "steal_s": round(spent[7], 1)}


def job(config, name: str, address: str | None = None) -> dict:
    from pipeline.job import run_job

    monitor = PartsMonitor(Path(config.output.path) / "parts")
    monitor.start()
    cpu_before = _machine_cpu()
    started = time.perf_counter()
    report = run_job(config, address=address)
    wall = time.perf_counter() - started
    cpu = _cpu_use(cpu_before, _machine_cpu(), wall)
    monitor.stopped.set()
    monitor.join()
    assert report.failed == 0, report.failures[:3]
    return {
        "system": name,
        "wall_s": wall,
        "audio_s": report.audio_seconds,
        "rows": report.rows,
        "workers": len(report.workers),
        "steady_rows_per_s": _round(monitor.steady_rows_per_s()),
        **{k: round(v, 2) for k, v in monitor.phases(started).items()},
        **cpu,
        # the engine actors' CPU-seconds (sampled every 0.5 s, so up to 0.5 s of each actor's last work is missed);
        # cpu_s - engine_cpu_s is what everything else on the machine took
        "engine_cpu_s": round(monitor.engine_cpu_s(), 1),
        "occupancy": round(sum(w["occupancy"] for w in report.workers.values()) / len(report.workers), 3),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _pair_key(key: str, pair: int) -> str:
    """Results key of a scaling run: "one"/"two" for the first pair (the keys before `--repeat`), then "one-2", ..."""
    return key if pair == 0 else f"{key}-{pair + 1}"


def main() -> None:
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
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray.cluster_utils import Cluster

    work = Path(tempfile.mkdtemp(prefix="raytts-bench-"))
    rows = _rows(args.rows)
    text_file = work / "rows.jsonl"
    text_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    from actors.checkpoint import resolve
    from actors.model.config import PRESETS

    if args.model == "tiny":
        model = str(resolve(args.model).asset.parent)
    elif args.model in PRESETS:
        from benchmarks.engine import ensure_checkpoint

        model = str(ensure_checkpoint(args.model, 0) / "asset")
    else:
        model = args.model
    if args.budget_mib is None:
        args.budget_mib = 256 if args.model == "tiny" else 2048
    parts = set(args.parts.split(","))
    if not parts <= {"overhead", "scaling", "overlap"} or not parts:
        parser.error(f"--parts takes overhead, scaling and/or overlap, got {args.parts!r}")
    os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="rb", dir="/tmp")
    results: dict[str, dict] = {}
    summary: dict[str, float] = {}
    if "overhead" in parts:
        results["engine"] = engine_alone(model, rows, args.steps, args.budget_mib)
        ray.init(address="local", num_cpus=4, include_dashboard=False)
        config = _job_config(
            model, text_file, work / "out1", args.steps, 1, args.budget_mib, batch_size=args.batch_size
        )
        results["local"] = job(config, "job, 1 actor (local Ray)")
        ray.shutdown()

    if "scaling" in parts:
        # Two nodes, one fake GPU each for one engine actor; the parse/store stages use the nodes' logical CPUs.
        cluster = Cluster(
            initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 1, "include_dashboard": False}
        )
        cluster.add_node(num_cpus=1, num_gpus=1)
        ray.init(address=cluster.address)
        cluster.wait_for_nodes()
        # A short 2-actor job first, so both measured runs find the same warm cluster: on a fresh one the first
        # job's parse and store workers start cold (measured: its parse took 3.95 s, the next job's 0.33 s), which
        # made the 1-actor run, always first, pay a start-up the 2-actor run did not.
        warm_file = work / "warm-up.jsonl"
        warm_file.write_text("".join(json.dumps(r) + "\n" for r in rows[:256]))
        job(_job_config(model, warm_file, work / "out-warm-up", 16, 2, args.budget_mib, True), "warm-up")
        # 1 then 2 actors, `--repeat` times: pairs run back to back, so a slow spell of this shared machine hits
        # one pair rather than one side of every comparison.
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

    if "overlap" in parts:
        # Natural lengths (EOS not masked): a call's rows end at different steps, so with one call at a time its
        # slots drain before the next call's rows arrive; with two, the next call's rows take the freed slots.
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

    for r in results.values():
        r["audio_s_per_s"] = round(r["audio_s"] / r["wall_s"], 2)
        r["wall_s"] = round(r["wall_s"], 2)
        r["audio_s"] = round(r["audio_s"], 2)
    header = ["system", "rows", "wall_s", "audio_s", "audio_s_per_s", "steady_rows_per_s", "occupancy", "busy_cores"]
    header += ["cpu_s", "engine_cpu_s", "steal_s"]
    print(" | ".join(header))
    for r in results.values():
        print(" | ".join(str(r.get(h, "-")) for h in header))
    if "overhead" in parts:
        summary["ray_overhead"] = round(1 - results["local"]["audio_s_per_s"] / results["engine"]["audio_s_per_s"], 3)
        print(f"Ray overhead vs engine alone: {summary['ray_overhead'] * 100:.1f}%")
    if "scaling" in parts:
        pairs = []
        for r in range(args.repeat):
            one, two = results[_pair_key("one", r)], results[_pair_key("two", r)]
            pair = {
                "whole": round(two["audio_s_per_s"] / one["audio_s_per_s"], 2),
                "steady": _round(two["steady_rows_per_s"] / one["steady_rows_per_s"])
                if one["steady_rows_per_s"] and two["steady_rows_per_s"]
                else None,
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
        summary["two_actor_speedup"] = round(sum(p["whole"] for p in pairs) / len(pairs), 2)
        steady = [p["steady"] for p in pairs if p["steady"] is not None]
        summary["two_actor_steady_speedup"] = _round(sum(steady) / len(steady)) if steady else None
        summary["pairs"] = pairs
        steady_text = f"{summary['two_actor_steady_speedup']}x" if steady else "no"
        print(
            f"2 actors vs 1 (mean of {len(pairs)} pair{'s' if len(pairs) > 1 else ''}): "
            f"{summary['two_actor_speedup']}x whole job, {steady_text} steady state"
        )
    if "overlap" in parts:
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


if __name__ == "__main__":
    main()
