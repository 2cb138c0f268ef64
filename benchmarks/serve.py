"""Serve benchmark: throughput, latency and time-to-first-audio at 1, 8 and 32 concurrent clients, raytts vs a naive
one-request-at-a-time replica, in one run on loopback.

    python benchmarks/serve.py [--model tiny] [--clients 1,8,32] [--requests-per-client 4] [--steps 96]

Both applications run in one Serve instance on 127.0.0.1 with the same checkpoint and one replica each:
- raytts: the engine's continuous batcher (up to --slots rows in shared decode steps);
- naive: the same code with one slot, i.e. each request runs alone while the others wait (what a replica that
  calls the model per request under a lock does).
Every request streams 16-bit PCM from the OpenAI endpoint and generates exactly --steps frames (min = max new
tokens via the native endpoint's controls), so both do identical model work. The load generator is bounded:
C clients each send --requests-per-client requests back to back. Reported per (app, clients): requests/s,
audio-seconds per wall-second, p50/p99 latency, p50/p99 time to first audio byte. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SAMPLE_RATE = 24000


def _app(model: str, slots: int, steps: int) -> dict:
    return {
        "models": {"m": {"source": model}},
        "voices": {"alloy": {"seed": 2}},
        "engine": {
            "device": "cpu",
            "max_slots": slots,
            "max_new_tokens": steps,
            "max_prompt_tokens": 128,
            "stream_chunk_steps": 12,
        },
        "limits": {"request_timeout_s": 600, "max_queued_rows": 100_000},
    }


def _one(url: str, text: str, steps: int, seed: int) -> tuple[float, float, int]:
    """(latency s, time to first audio byte s, audio samples) of one streamed request."""
    body = {
        "text": text,
        "voice": "alloy",
        "seed": seed,
        "min_new_tokens": steps,
        "max_new_tokens": steps,
        "stream": True,
        "response_format": "pcm",
    }
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    first = None
    size = 0
    with urllib.request.urlopen(request, timeout=900) as response:
        if response.status != 200:
            raise RuntimeError(f"{url}: HTTP {response.status}")
        while piece := response.read1(1 << 16):
            if first is None:
                first = time.perf_counter() - started
            size += len(piece)
    return time.perf_counter() - started, first if first is not None else float("nan"), size // 2


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def load(url: str, clients: int, per_client: int, steps: int) -> dict:
    from tests.support.jobdata import sentence

    def client(c: int) -> list[tuple[float, float, int]]:
        return [_one(url, sentence(c * 1000 + i), steps, c * 1000 + i) for i in range(per_client)]

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [r for rs in pool.map(client, range(clients)) for r in rs]
    wall = time.perf_counter() - started
    latencies = [r[0] for r in results]
    firsts = [r[1] for r in results]
    audio_s = sum(r[2] for r in results) / SAMPLE_RATE
    return {
        "clients": clients,
        "requests": len(results),
        "wall_s": wall,
        "requests_per_s": len(results) / wall,
        "audio_s_per_s": audio_s / wall,
        "latency_p50_s": _percentile(latencies, 50),
        "latency_p99_s": _percentile(latencies, 99),
        "ttfa_p50_s": _percentile(firsts, 50),
        "ttfa_p99_s": _percentile(firsts, 99),
    }


def _stats(base: str) -> dict:
    with urllib.request.urlopen(f"{base}/v1/stats", timeout=60) as response:
        return json.loads(response.read())["engines"]["m"]


def _run_apps(args: argparse.Namespace, base: str, apps: dict[str, int]) -> list[dict]:
    """Deploys each app (raytts with its slots, naive with 1), then loads each at every client count."""
    from ray import serve

    from actors.serving.app import build_app
    from actors.serving.config import DeploymentSpec

    deployment = DeploymentSpec(num_replicas=1, max_ongoing_requests=512, max_queued_requests=1024, num_cpus=1)
    rows = []
    try:
        for name, slots in apps.items():
            config = _app(args.model, slots, args.steps)
            config["engine"]["threads"] = args.threads
            serve.run(build_app(config, deployment), name=name, route_prefix=f"/{name}")
        for clients in [int(c) for c in args.clients.split(",")]:
            for name in apps:
                url = f"{base}/{name}/v1/tts"
                _one(url, "warm up.", 8, 0)
                before = _stats(f"{base}/{name}")
                row = {"app": name, **load(url, clients, args.requests_per_client, args.steps)}
                after = _stats(f"{base}/{name}")
                row["engine_steps"] = after["steps"] - before["steps"]
                row["max_concurrent_rows"] = after["max_concurrent"]
                rows.append(row)
                print(
                    f"{name:7s} clients={clients:3d} req/s={row['requests_per_s']:7.2f} "
                    f"audio-s/s={row['audio_s_per_s']:7.2f} p50={row['latency_p50_s']:6.2f}s "
                    f"p99={row['latency_p99_s']:6.2f}s ttfa50={row['ttfa_p50_s']:6.2f}s ttfa99={row['ttfa_p99_s']:6.2f}s",
                    flush=True,
                )
    finally:
        serve.shutdown()
    return rows


def _print_table(rows: list[dict]) -> dict[int, float]:
    """Prints every run and the raytts / naive throughput ratio per client count; returns the ratios."""
    print()
    header = f"{'clients':>7} {'app':>7} {'req/s':>7} {'audio-s/s':>10} {'p50 s':>7} {'p99 s':>7} {'TTFA p50':>9} {'TTFA p99':>9}"
    print(header)
    print("-" * len(header))
    speedups: dict[int, float] = {}
    for row in rows:
        print(
            f"{row['clients']:>7} {row['app']:>7} {row['requests_per_s']:>7.2f} {row['audio_s_per_s']:>10.2f} "
            f"{row['latency_p50_s']:>7.2f} {row['latency_p99_s']:>7.2f} {row['ttfa_p50_s']:>9.2f} {row['ttfa_p99_s']:>9.2f}"
        )
    for clients in sorted({r["clients"] for r in rows}):
        by_app = {r["app"]: r for r in rows if r["clients"] == clients}
        speedups[clients] = by_app["raytts"]["audio_s_per_s"] / by_app["naive"]["audio_s_per_s"]
    print()
    for clients, ratio in speedups.items():
        print(f"raytts / naive throughput at {clients} clients: {ratio:.2f}x")
    return speedups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny", help="checkpoint (default: the built-in tiny model)")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--steps", type=int, default=96, help="frames per request (46.875 per audio second)")
    parser.add_argument("--slots", type=int, default=32, help="raytts engine slots")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per replica")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "serve.json")
    args = parser.parse_args()

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray
    from ray import serve

    from tests.support.s3 import free_port

    tmp = tempfile.mkdtemp(prefix="rb", dir="/tmp")
    os.environ["RAY_TMPDIR"] = tmp
    ray.init(address="local", num_cpus=4, include_dashboard=False, _temp_dir=tmp, configure_logging=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base = f"http://127.0.0.1:{port}"
    apps = {"raytts": args.slots, "naive": 1}
    try:
        rows = _run_apps(args, base, apps)
    finally:
        ray.shutdown()
    speedups = _print_table(rows)
    report = {
        "model": args.model,
        "steps_per_request": args.steps,
        "requests_per_client": args.requests_per_client,
        "raytts_slots": args.slots,
        "torch_threads": args.threads,
        "cpu_count": os.cpu_count(),
        "rows": rows,
        "throughput_ratio_raytts_vs_naive": speedups,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
