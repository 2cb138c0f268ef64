"""The offline job on a 3-node `ray.cluster_utils.Cluster` with fake GPUs, and under faults.

Fake GPUs: Ray schedules `num_gpus=1` actors onto nodes that advertise GPUs, but torch sees no CUDA device,
so each engine falls back to the CPU by itself. Everything else (Ray, Ray Data, the job) is real.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.config import JobConfig
from pipeline.job import run_job
from pipeline.parts import read_outputs
from tests.support.jobdata import write_text_shards

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3_server):
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # AF_UNIX paths must stay short
    os.environ.update(s3_server.env())  # every node's workers can reach the loopback S3 server
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4, "num_gpus": 0})
    workers = [cluster.add_node(num_cpus=2, num_gpus=1) for _ in range(2)]
    ray.init(address=cluster.address)
    cluster.wait_for_nodes()
    yield cluster, workers
    ray.shutdown()
    cluster.shutdown()


def _config(tiny_checkpoint: Path, texts: Path, output: Path, **actors) -> JobConfig:
    return JobConfig.model_validate(
        {
            "model": str(tiny_checkpoint),
            "inputs": {"text": [str(texts)]},
            "output": {"path": str(output)},
            "sampling": {"max_new_tokens": 40, "min_new_tokens": 20, "temperature": 0.5},
            "engine": {"device": "auto", "budget_mib": 64, "max_slots": 16},
            "actors": {"num_gpus": 1, "num_cpus": 0.5, "batch_size": 4, "max_concurrent_batches": 2, **actors},
        }
    )


def _all_ids(texts: Path, n: int) -> list[str]:
    from tests.support.jobdata import txt_ids

    ids = write_text_shards(texts, n, [])
    return ids + txt_ids(texts / "c.txt", n // 4)


def _rows_written(output: Path) -> int:
    total = 0
    for path in (output / "parts").glob("**/*.parquet"):
        try:
            total += pq.ParquetFile(path).metadata.num_rows
        except Exception:  # noqa: BLE001 - a part being written right now is not countable yet
            continue
    return total


def _kill_processes_with_env(key: str, value: str, timeout: float = 30.0) -> None:
    """SIGKILL every process started with `key=value` in its environment, and wait until none is left."""
    needle = f"{key}={value}".encode()

    def alive() -> list[int]:
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/environ", "rb") as f:
                        if needle in f.read().split(b"\0"):
                            pids.append(int(entry))
                except OSError:  # exited meanwhile, or not ours to read
                    continue
        return pids

    for pid in alive():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    _wait_for(lambda: not alive(), timeout=timeout)


def _wait_for(predicate, timeout: float = 300.0, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(interval)


def _assert_exactly_once(output: Path, expected: list[str]) -> None:
    """Every id once in the parts, and one audio file per row (the fault tests' rows all succeed)."""
    ids = read_outputs(str(output), ["id"]).column("id").to_pylist()
    assert Counter(ids) == Counter(expected)
    assert sorted(p.name for p in (output / "audio").iterdir()) == sorted(f"{i}.flac" for i in expected)


def test_rows_are_processed_on_every_worker_node(cluster, s3_server, tiny_checkpoint, tmp_path):
    """The issue's job on the 3-node cluster: text shards in every format, three reference speakers, output to the
    loopback S3 bucket; both GPU worker nodes run an engine replica and every id is written exactly once."""
    import ray

    from tests.support.jobdata import txt_ids, write_speakers

    _, workers = cluster
    s3_server.client().create_bucket(Bucket="cluster-out")
    names = ["alice", "bob", "carol"]
    manifest = write_speakers(tmp_path / "speakers", names)
    expected = write_text_shards(tmp_path / "texts", 120, names) + txt_ids(tmp_path / "texts" / "c.txt", 30)
    config = _config(tiny_checkpoint, tmp_path / "texts", tmp_path / "unused", size=2)
    config.inputs.speakers = [str(manifest)]
    config.output.path = "s3://cluster-out/job"
    report = run_job(config)
    assert report.failed == 0 and report.rows == 120, report.failures[:3]
    table = read_outputs("s3://cluster-out/job", ["id", "speaker", "audio.path"])
    assert Counter(table.column("id").to_pylist()) == Counter(expected)
    assert set(names) <= set(table.column("speaker").to_pylist())
    keys = {o["Key"] for o in s3_server.client().list_objects_v2(Bucket="cluster-out", Prefix="job/audio/")["Contents"]}
    assert keys == {f"job/audio/{i}.flac" for i in expected}
    nodes_used = {worker.split("/")[0] for worker in report.workers}
    worker_nodes = {w.node_id[:12] for w in workers}
    assert nodes_used == worker_nodes, "both GPU worker nodes ran an engine replica"
    assert ray.cluster_resources().get("GPU") == 2


def test_fractional_gpus_put_two_replicas_on_each_gpu(cluster, tiny_checkpoint, tmp_path):
    """num_gpus 0.5: four engine actors on the two one-GPU nodes, two per node (fake GPUs, CPU engines). 160 rows
    (40 blocks): with 80, the two actors that started first on a cold cluster could finish every block before the
    other two were up (seen once in CI), and an actor without rows does not appear in the report."""
    _, workers = cluster
    expected = _all_ids(tmp_path / "texts", 160)
    report = run_job(_config(tiny_checkpoint, tmp_path / "texts", tmp_path / "out", size=4, num_gpus=0.5))
    assert report.failed == 0 and report.rows == 160
    _assert_exactly_once(tmp_path / "out", expected)
    per_node = Counter(worker.split("/")[0] for worker in report.workers)
    assert per_node == {w.node_id[:12]: 2 for w in workers}


def test_an_autoscaling_pool_completes_the_job(cluster, tiny_checkpoint, tmp_path):
    """actors.min_size/max_size: Ray Data's autoscaling actor pool (1 to 2 replicas) runs the whole job."""
    expected = _all_ids(tmp_path / "texts", 80)
    report = run_job(_config(tiny_checkpoint, tmp_path / "texts", tmp_path / "out", min_size=1, max_size=2))
    assert report.failed == 0 and report.rows == 80
    _assert_exactly_once(tmp_path / "out", expected)
    assert 1 <= len(report.workers) <= 2


def test_a_pool_larger_than_the_cluster_runs_with_the_actors_that_fit(cluster, tiny_checkpoint, tmp_path, caplog):
    """size=3 GPU actors on two GPU nodes: a warning up front, then the job completes on the two that fit (Ray
    Data starts the third when a GPU appears; on this cluster none does)."""
    # 24 blocks: enough that the first actor up cannot take them all (3 queued per actor) before the second starts
    expected = _all_ids(tmp_path / "texts", 96)
    with caplog.at_level(logging.WARNING, logger="pipeline.checks"):
        report = run_job(_config(tiny_checkpoint, tmp_path / "texts", tmp_path / "out", size=3))
    assert "the pool wants 3 engine actors" in caplog.text and "fit only 2" in caplog.text
    assert report.failed == 0 and report.rows == 96
    assert len(report.workers) == 2
    _assert_exactly_once(tmp_path / "out", expected)


def _run_in_thread(config: JobConfig) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def target() -> None:
        try:
            box["report"] = run_job(config)
        except BaseException as err:  # noqa: BLE001 - surfaced by the test below
            box["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def _tts_actor_pids() -> list[int]:
    from ray.util.state import list_actors

    return [
        a.pid
        for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
        if "TTSStage" in (a.class_name or "") and a.pid
    ]


def test_an_engine_actor_killed_twice_loses_and_duplicates_nothing(cluster, tiny_checkpoint, tmp_path):
    expected = _all_ids(tmp_path / "texts", 160)
    output = tmp_path / "out"
    thread, box = _run_in_thread(_config(tiny_checkpoint, tmp_path / "texts", output, size=2))
    kills = 0
    for threshold in (8, 60):
        _wait_for(lambda t=threshold: _rows_written(output) >= t or not thread.is_alive())
        pids = _tts_actor_pids()
        if thread.is_alive() and pids:
            os.kill(pids[0], signal.SIGKILL)
            kills += 1
    thread.join(timeout=600)
    assert "error" not in box, box.get("error")
    assert kills == 2, "the job finished before both kills; make it longer"
    assert box["report"].failed == 0
    _assert_exactly_once(output, expected)


def test_a_worker_node_removed_mid_job(cluster, tiny_checkpoint, tmp_path):
    ray_cluster, workers = cluster
    expected = _all_ids(tmp_path / "texts", 160)
    output = tmp_path / "out"
    spare = ray_cluster.add_node(num_cpus=2, num_gpus=1)  # so the job can go on at full size after the loss
    ray_cluster.wait_for_nodes()
    thread, box = _run_in_thread(_config(tiny_checkpoint, tmp_path / "texts", output, size=2))
    _wait_for(lambda: _rows_written(output) >= 12 or not thread.is_alive())
    removed = thread.is_alive()
    if removed:
        ray_cluster.remove_node(workers[1])
    thread.join(timeout=600)
    assert "error" not in box, box.get("error")
    assert removed, "the job finished before the node was removed; make it longer"
    assert box["report"].failed == 0
    _assert_exactly_once(output, expected)
    assert spare is not None


def test_driver_killed_at_half_then_rerun_finishes_only_the_rest(tiny_checkpoint, tmp_path):
    """The driver (and its local Ray) dies by SIGKILL at ~50%; the same command again completes the job. The re-run
    names the output with a relative --output flag: relative to where the command runs, not to the YAML's folder."""
    expected = _all_ids(tmp_path / "texts", 120)  # enough blocks that half is mid-job (200 took 124 s of CI)
    output = tmp_path / "out"
    config = _config(tiny_checkpoint, tmp_path / "texts", output, size=1, num_gpus=0, num_cpus=1).model_dump()
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "job.yaml").write_text(yaml.safe_dump(config))
    env = {
        **os.environ,
        "RAY_TMPDIR": tempfile.mkdtemp(prefix="rd", dir="/tmp"),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "jobs.cli", "run", str(tmp_path / "conf" / "job.yaml")]
    first = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: _rows_written(output) >= len(expected) // 2 or first.poll() is not None, timeout=600)
        assert first.poll() is None, "the first run finished before it could be killed"
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        # Ray's workers run in their own process groups: a store actor outliving the driver could still write a
        # part after `done_before` is counted. Kill every process of that Ray (found by its private RAY_TMPDIR).
        _kill_processes_with_env("RAY_TMPDIR", env["RAY_TMPDIR"])
    done_before = len({r for r in read_outputs(str(output), ["id"]).column("id").to_pylist()})
    assert 0 < done_before < len(expected)
    second = subprocess.run([*cmd, "--output", "out"], env=env, capture_output=True, text=True, timeout=600,
                            start_new_session=True, cwd=tmp_path)  # fmt: skip
    assert second.returncode == 0, second.stderr[-3000:]
    assert "audio-seconds per second" in second.stderr and "occupancy" in second.stderr  # the printed table
    _assert_exactly_once(output, expected)
    report = yaml.safe_load((output / "_report.json").read_text())
    assert report["skipped_finished"] == done_before
    assert report["this_run"] == len(expected) - done_before
