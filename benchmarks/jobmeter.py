"""Measuring one offline job run for the benchmarks: wall time, audio, the steady-state rate sampled from its finished
Parquet parts, its phases, the machine's busy cores / CPU-seconds / steal, and the engine actors' CPU-seconds."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

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
        "steady_rows_per_s": round_or_none(monitor.steady_rows_per_s()),
        **{k: round(v, 2) for k, v in monitor.phases(started).items()},
        **cpu,
        # the engine actors' CPU-seconds (sampled every 0.5 s, so up to 0.5 s of each actor's last work is missed);
        # cpu_s - engine_cpu_s is what everything else on the machine took
        "engine_cpu_s": round(monitor.engine_cpu_s(), 1),
        "occupancy": round(sum(w["occupancy"] for w in report.workers.values()) / len(report.workers), 3),
    }


def round_or_none(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
