"""The offline job submitted with `ray job submit --working-dir .` to a real multi-node Ray on this machine, started
and stopped by cluster/local/start.sh and stop.sh (a `ray start` head and two workers with fake GPUs, on loopback).
The engine actors run on the worker nodes.

The venv's bin is on PATH, as `raytts` is on an image where it is installed. The engine actors ask for a GPU each
(actors.num_gpus=1), so Ray places one on each worker node; the fake GPUs have no CUDA behind them, so the engines run
with engine.device=cpu. Token auth is off for this throwaway cluster (the scripts set RAY_AUTH_MODE=disabled).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
REPO = Path(__file__).resolve().parents[2]
LOCAL = REPO / "cluster" / "local"


def test_ray_job_submit_runs_raytts_run_on_a_local_multi_node_cluster(tmp_path, tiny_checkpoint):
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    started = subprocess.run(["bash", str(LOCAL / "start.sh"), "--workers", "2"], env=env, capture_output=True,
                             text=True, timeout=240)  # fmt: skip
    exports = dict(
        line.removeprefix("export ").split("=", 1) for line in started.stdout.splitlines() if line.startswith("export ")
    )
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        assert exports["RAY_ADDRESS"].startswith("http://127.0.0.2:"), exports
        output = tmp_path / "out"
        submit = ["ray", "job", "submit", "--working-dir", ".", "--", "raytts", "run", "jobs/examples/job.yaml",
                  "--output", str(output), "--model", str(tiny_checkpoint), "--set", "actors.size=2",
                  "--set", "actors.num_gpus=1", "--set", "engine.device=cpu"]  # fmt: skip
        done = subprocess.run(submit, env={**env, **exports}, cwd=REPO, capture_output=True, text=True, timeout=420)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "succeeded" in done.stdout + done.stderr
        report = json.loads((output / "_report.json").read_text())
        assert report["rows"] == 11 and report["ok"] == 11 and report["failed"] == 0, report
        assert len(list((output / "audio").glob("*.flac"))) == 11
        # the cluster the scripts started: a head without GPUs and two workers with one fake GPU each; the engine
        # actors (1 GPU each) ran on the workers. (Which actor gets the 3 blocks of 11 rows is Ray Data's choice: rows
        # on every worker node are checked with 120 rows in test_pipeline_faults.py.)
        listed = subprocess.run(["ray", "list", "nodes", "--format", "json", "--address", exports["RAY_ADDRESS"]],
                                env={**env, **exports}, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert listed.returncode == 0, listed.stderr[-2000:]
        nodes = [n for n in json.loads(listed.stdout) if n["state"] == "ALIVE"]
        workers = {n["node_id"][:12] for n in nodes if not n["is_head_node"]}
        assert len(nodes) == 3 and len(workers) == 2, nodes
        assert all(n["resources_total"].get("GPU") == 1 for n in nodes if not n["is_head_node"]), nodes
        used = {key.split("/")[0] for key in report["workers"]}
        assert used and used <= workers, (used, workers)
        assert sum(w["rows"] for w in report["workers"].values()) == 11, report["workers"]
    finally:
        if "RAYTTS_LOCAL_DIR" in exports:
            stopped = subprocess.run(["bash", str(LOCAL / "stop.sh"), exports["RAYTTS_LOCAL_DIR"]], env=env,
                                     capture_output=True, text=True, timeout=120)  # fmt: skip
            assert stopped.returncode == 0, stopped.stderr
            assert not Path(exports["RAYTTS_LOCAL_DIR"]).exists()
    leftover = subprocess.run(["pgrep", "-f", f"{exports['RAYTTS_LOCAL_DIR']}/n[0-9]"], capture_output=True, text=True)
    assert leftover.stdout == "", f"processes of the local cluster still run: {leftover.stdout}"
