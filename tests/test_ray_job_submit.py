"""The offline job submitted with `ray job submit --working-dir .` to a running Ray head on loopback.

The head is a real `ray start --head`; the venv's bin is on PATH, as `raytts` is on an image where it is installed.
Token auth is disabled for this throwaway cluster (Ray 2.60 otherwise needs a token for job clients).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support.s3 import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
REPO = Path(__file__).resolve().parents[1]


def test_ray_job_submit_runs_raytts_run(tmp_path, tiny_checkpoint):
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": "disabled",
    }
    env.pop("RAY_ADDRESS", None)
    temp = tempfile.mkdtemp(prefix="rj", dir="/tmp")
    gcs, dashboard = free_port(), free_port()
    ray = f"{bin_dir}/ray"
    start = [ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}", "--dashboard-host=127.0.0.1",
             f"--dashboard-port={dashboard}", "--num-cpus=8", f"--temp-dir={temp}"]  # fmt: skip
    subprocess.run(start, env=env, check=True, capture_output=True, timeout=180)
    try:
        output = tmp_path / "out"
        submit = [ray, "job", "submit", "--address", f"http://127.0.0.1:{dashboard}", "--working-dir", ".", "--",
                  "raytts", "run", "jobs/examples/job.yaml", "--output", str(output), "--model", str(tiny_checkpoint)]  # fmt: skip
        done = subprocess.run(submit, env=env, cwd=REPO, capture_output=True, text=True, timeout=420)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "succeeded" in done.stdout + done.stderr
        report = json.loads((output / "_report.json").read_text())
        assert report["rows"] == 11 and report["failed"] == 0
        assert len(list((output / "audio").glob("*.flac"))) == 11
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=120)
