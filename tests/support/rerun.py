"""Helpers for the re-run tests: a job folder the tests edit between runs, the output read back in full, and a
driver in another process (to kill it, or to hold the output while a second driver tries)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.config import JobConfig

REPO = Path(__file__).resolve().parents[2]
COLUMNS = [
    "id", "key", "source", "error", "text", "spoken_text", "input_digest", "job_digest", "speaker", "seed", "codes",
    "num_samples", "audio",
]  # fmt: skip


@dataclass
class JobFolder:
    """A job's inputs (shards under `inputs`), its settings and its output, as a user edits them between runs."""

    root: Path
    model: str
    temperature: float = 0.5
    output_name: str = "out"
    extra: dict = field(default_factory=dict)

    @property
    def inputs(self) -> Path:
        return self.root / "in"

    @property
    def output(self) -> Path:
        return self.root / self.output_name

    def config(self, output: Path | None = None) -> JobConfig:
        return JobConfig.model_validate({
            "model": self.model,
            "inputs": {"text": [str(self.inputs)], "base": str(self.root)},
            "output": {"path": str(output or self.output), "save_codes": True},
            "refine": {"enabled": False},
            "sampling": {"max_new_tokens": 6, "min_new_tokens": 2, "temperature": self.temperature},
            "engine": {"device": "cpu", "budget_mib": 64, "max_slots": 16},
            "actors": {"size": 1, "num_gpus": 0, "num_cpus": 1, "batch_size": 4},
            **self.extra,
        })  # fmt: skip


def output_rows(output: Path) -> list[dict]:
    """Every output row (audio as its bytes), sorted by source."""
    rows = []
    for part in sorted((output / "parts").glob("*.parquet")):
        for row in pq.read_table(part, columns=COLUMNS).to_pylist():
            row["audio"] = row["audio"]["bytes"] if row["audio"] else None
            rows.append(row)
    return sorted(rows, key=lambda r: r["source"])


def audio_files(output: Path) -> dict[str, bytes]:
    folder = output / "audio"
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}


def same_audio(mine: bytes | None, theirs: bytes | None) -> bool:
    """Two encoded clips hold the same samples, to one step of 16-bit PCM: a row's codes are the same however it
    was batched, but float sums in the GPT and the vocoder depend on the batch's shape (last-bit differences)."""
    import io

    import numpy as np
    import soundfile as sf

    if mine is None or theirs is None:
        return mine is theirs
    a, _ = sf.read(io.BytesIO(mine), dtype="int16")
    b, _ = sf.read(io.BytesIO(theirs), dtype="int16")
    return a.shape == b.shape and int(np.abs(a.astype(np.int32) - b).max(initial=0)) <= 1


def driver(config: JobConfig, address: str, log: Path) -> subprocess.Popen:
    """`run_job(config)` in another process, joined to the Ray at `address` (a second driver, as `raytts run
    --address` would be); its report goes to `log` with the suffix .json."""
    script = (
        "import json, sys, pathlib; from pipeline.config import JobConfig; from pipeline.job import run_job; "
        "config = JobConfig.model_validate(json.loads(sys.argv[1])); report = run_job(config, address=sys.argv[2]); "
        "pathlib.Path(sys.argv[3]).write_text(json.dumps(report.to_dict()))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-c", script, json.dumps(config.model_dump()), address, str(log.with_suffix(".json"))],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO,
        )  # fmt: skip


def wait_for(predicate, timeout: float = 120.0, what: str = "a condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout} s for {what}")
        time.sleep(0.05)


def lease_holder(output: Path) -> int | None:
    try:
        return json.loads((output / "_lease.json").read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None
