"""The CPU stages around an engine at GPU speed: CPU cost per row by stage, the head node's CPU and memory, and the
bottleneck, measured with the stand-in engine (`actors/replica/standin.py`) on a machine without a GPU.

    python benchmarks/cpu_stages.py [--rows 100000] [--shards 20] [--rate inf] [--out benchmarks/results/cpu_stages.json]

Runs the real `run_job` (job defaults: full normalisation, FLAC audio files and Parquet parts on a local output
folder, the quality checks) on `--rows` rows of the front-end benchmark's mixed corpus (`benchmarks/frontend.py`:
English and Chinese, numbers, dates, money, mixed-language and long rows) in `--shards` JSONL shards. One engine
actor holds the stand-in engine (`RAYTTS_STANDIN_ROWS_PER_S` = `--rate` rows/s; `inf`: rows finish as soon as they
arrive, so the CPU stages alone set the pace) and one fake GPU of a local Ray (so Ray Data does not fuse the prepare
tasks into it, as it would on a CPU-only pool); everything else is as a user runs it.

A sampler reads every Ray process's CPU-seconds and process title (/proc) every 0.25 s and charges each process's
CPU since the last sample to the stage its title names (a task worker's title changes with the task it runs; CPU
of an interval that ends idle goes to the task it ran before). Reported per stage: CPU-seconds, milliseconds per
row and cores per 1,000 rows/s; the head node's share (the driver and Ray's own processes: GCS, raylet, dashboard
agents) with the driver's peak resident memory; rows/s and audio-s/s achieved (whole job and steady state); and the
cores a node needs per GPU at the GPU rates given by `--gpu-rows-per-s` (estimates unless measured: see the docs).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.jobmeter import PartsMonitor  # noqa: E402  (after the path: run as a script)

# Process title (its start) -> stage. Ray Data names a map task or actor after its function or class.
STAGES = (
    ("FlatMap(_parse_text)", "parse (read + parse shards)"),
    ("write_block_books", "books (identity files)"),
    ("amend_block", "books (amend blocks)"),
    ("tokenizer_of", "model resolve"),
    ("MapBatches(prepare_rows)", "prepare (normalise, split, tokenise)"),
    ("MapWorker(MapBatches(TTSStage))", "engine actor host work (stand-in)"),
    ("MapWorker(MapBatches(StoreAudio))", "store (FLAC encode, audio files, parts)"),
)
# Ray's own processes: the GCS runs on the head only, a raylet and its agents on every node.
SYSTEM = (("gcs_server", "Ray GCS (head)"), ("raylet", "Ray raylet"))
SYSTEM_OTHER = ("dashboard", "log_monitor", "monitor.py", "runtime_env", "ray_client")
# Ray Data's own coordinating actors (on the head, with the driver's executor)
DATA_ACTORS = ("_StatsActor", "_AutoscalingCoordinatorActor", "ActorLocationTracker", "StreamingRepartition")


def stage_of(title: str) -> str:
    for prefix, stage in STAGES:
        if prefix in title:
            return stage
    if title.startswith("ray::"):
        name = title.removeprefix("ray::").split(" ")[0]
        if name.startswith(DATA_ACTORS):
            return "Ray Data coordination (actors, repartition)"
        return "Ray agents and other tasks" if name.startswith(("Dashboard", "Runtime")) else f"other ({name[:40]})"
    return next((stage for name, stage in SYSTEM if name in title), "Ray agents and other tasks")


DRIVER = "driver (executor, books, progress, report)"


class CpuSampler(threading.Thread):
    """CPU-seconds per stage, charged by process title (see the module docstring); the driver's peak resident
    memory, private (anonymous + file-backed) and shared (object-store pages it mapped). It runs in the driver's
    process: its own CPU (`own_cpu_s`) is taken out of the driver's by `run`."""

    def __init__(self, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.last: dict[int, tuple[float, str]] = {}  # pid -> (CPU-seconds, stage charged last)
        self.by_stage: dict[str, float] = defaultdict(float)
        self.driver_peak_private_mib = self.driver_peak_shared_mib = 0.0
        self.own_cpu_s = 0.0
        self.stopped = threading.Event()
        self.tick = os.sysconf("SC_CLK_TCK")

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.sample()
        self.sample()
        self.own_cpu_s = time.thread_time()

    def sample(self) -> None:
        me = os.getpid()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    title = f.read(300).replace(b"\0", b" ").decode(errors="replace")
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:  # ended between listing and reading
                continue
            if pid == me:
                stage = DRIVER
            elif (
                title.startswith("ray::")
                or any(name in title for name, _ in SYSTEM)
                or any(n in title for n in SYSTEM_OTHER)
            ):
                stage = stage_of(title)
            else:
                continue
            cpu = (int(fields[11]) + int(fields[12])) / self.tick
            before, charged = self.last.get(pid, (0.0, stage))
            if stage == "other (IDLE)" and pid in self.last:
                stage = charged  # an idle worker's last interval belongs to the task it ran
            self.by_stage[stage] += cpu - before
            self.last[pid] = (cpu, stage)
        with open("/proc/self/status") as f:
            kib = {k: int(v.split()[0]) for k, _, v in (line.partition(":") for line in f) if k.startswith("Rss")}
        private = (kib.get("RssAnon", 0) + kib.get("RssFile", 0)) / 1024
        self.driver_peak_private_mib = max(self.driver_peak_private_mib, private)
        self.driver_peak_shared_mib = max(self.driver_peak_shared_mib, kib.get("RssShmem", 0) / 1024)


class _Parts(PartsMonitor):
    """The stored rows over time (`benchmarks.jobmeter`), and this thread's own CPU, which is not the driver's."""

    def run(self) -> None:
        super().run()
        self.own_cpu_s = time.thread_time()


def write_inputs(folder: Path, rows: int, shards: int) -> None:
    from benchmarks.frontend import corpus

    folder.mkdir(parents=True)
    texts = corpus(rows)
    per = math.ceil(rows / shards)
    for shard in range(shards):
        with open(folder / f"shard-{shard:04d}.jsonl", "w") as f:
            for i in range(shard * per, min(rows, (shard + 1) * per)):
                f.write(json.dumps({"id": f"r{i}", "text": texts[i]}, ensure_ascii=False) + "\n")


def run(rows: int, shards: int, rate: float, batch_size: int, work: Path) -> dict:
    import ray

    from pipeline.config import JobConfig
    from pipeline.job import run_job

    write_inputs(work / "in", rows, shards)
    output = work / "out"
    config = JobConfig.model_validate(
        {
            "model": "tiny",
            "inputs": {"text": [str(work / "in")]},
            "output": {"path": str(output)},
            # the fake GPU places the one engine actor; it takes no CPU from the CPU stages (as on a GPU node)
            "actors": {"size": 1, "num_gpus": 1, "num_cpus": 0, "batch_size": batch_size},
        }
    )
    os.environ["RAYTTS_STANDIN_ROWS_PER_S"] = "inf" if math.isinf(rate) else str(rate)
    ray.init(num_cpus=os.cpu_count(), num_gpus=1, include_dashboard=False)
    sampler, parts = CpuSampler(), _Parts(output / "parts")
    sampler.sample()  # Ray's start-up is not the job's
    baseline = dict(sampler.by_stage)
    sampler.start()
    parts.start()
    started = time.perf_counter()
    try:
        report = run_job(config)
    finally:
        wall = time.perf_counter() - started
        sampler.stopped.set()
        parts.stopped.set()
        sampler.join()
        parts.join()
        ray.shutdown()
    stages = {k: v - baseline.get(k, 0.0) for k, v in sampler.by_stage.items()}
    stages[DRIVER] -= sampler.own_cpu_s + parts.own_cpu_s  # the benchmark's own threads
    return {
        "rows": report.rows,
        "failed": report.failed,
        "status": report.status,  # "finished": the closing check found every input row exactly once
        "audio_s": round(report.audio_seconds, 1),
        "wall_s": round(wall, 1),
        "rows_per_s": round(report.rows / wall, 1),
        "steady_rows_per_s": parts.steady_rows_per_s(),
        **{k: round(v, 2) for k, v in parts.phases(started).items()},
        "driver_peak_private_mib": round(sampler.driver_peak_private_mib, 1),
        "driver_peak_shared_mib": round(sampler.driver_peak_shared_mib, 1),
        "benchmark_threads_cpu_s": round(sampler.own_cpu_s + parts.own_cpu_s, 1),
        "cpu_s_by_stage": {k: round(v, 2) for k, v in sorted(stages.items(), key=lambda kv: -kv[1]) if v > 0.05},
    }


def table(result: dict) -> str:
    """Per stage: CPU-seconds, ms per row (= cores per 1,000 rows/s) and ms per audio-second."""
    rows, audio = result["rows"], result["audio_s"]
    lines = ["| stage | CPU-s | ms per row (= cores per 1,000 rows/s) | ms per audio-second |", "|---|---|---|---|"]
    stages = {**result["cpu_s_by_stage"], "all": sum(result["cpu_s_by_stage"].values())}
    for stage, cpu in stages.items():
        lines.append(f"| {stage} | {cpu:.1f} | {1000 * cpu / rows:.2f} | {1000 * cpu / audio:.3f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--shards", type=int, default=20)
    parser.add_argument("--rate", type=float, default=math.inf, help="stand-in engine rows/s (inf: no limit)")
    parser.add_argument("--batch-size", type=int, default=64, help="actors.batch_size: rows per block (job default 64)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "cpu_stages.json"))
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with tempfile.TemporaryDirectory(prefix="raytts-cpu-stages-") as work:
        result = run(args.rows, args.shards, args.rate, args.batch_size, Path(work))
    result.update(
        cpu=platform.processor() or platform.machine(),
        cores=os.cpu_count(),
        stand_in_rows_per_s=None if math.isinf(args.rate) else args.rate,
        batch_size=args.batch_size,
        date=time.strftime("%Y-%m-%d"),
    )
    print(table(result))
    print(json.dumps({k: v for k, v in result.items() if k != "cpu_s_by_stage"}, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    if result["status"] != "finished" or result["failed"]:
        print(f"the job did not finish clean: status {result['status']}, {result['failed']} rows failed")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
