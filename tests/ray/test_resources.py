"""Pre-flight check of the engine actor pool against the cluster's nodes (pipeline/resources.py).

The node dicts have the shape `ray.nodes()` returns; the end-to-end case runs `raytts run` on a real local Ray.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from pipeline.config import ActorsConfig
from pipeline.resources import pool_problems
from tests.support.jobdata import write_text_shards


def _node(cpus: float, gpus: float = 0, alive: bool = True) -> dict:
    resources = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
    return {"Alive": alive, "NodeManagerAddress": "127.0.0.1", "Resources": resources}


def test_gpu_actors_on_a_cluster_without_gpus_are_refused_with_the_fix():
    problems = pool_problems(ActorsConfig(num_gpus=1), [_node(8)])
    assert [p.fatal for p in problems] == [True]
    assert "no node can host an engine actor" in problems[0].message
    assert "actors.num_gpus: 0" in problems[0].message
    assert "CPU 8, GPU 0" in problems[0].message


def test_actors_holding_every_cpu_would_stall_the_cpu_stages():
    """Two 1-CPU actors on 3 logical CPUs leave 1, less than a parse task plus a store actor: Ray Data would wait
    for a CPU forever (seen on the 2-node benchmark cluster). With num_cpus=0 the GPUs place them and it runs."""
    nodes = [_node(2, 1), _node(1, 1)]
    problems = pool_problems(ActorsConfig(size=2, num_gpus=1, num_cpus=1), nodes)
    assert [p.fatal for p in problems] == [True]
    assert "leave 1 of the cluster's 3 CPUs" in problems[0].message
    assert pool_problems(ActorsConfig(size=2, num_gpus=1, num_cpus=0), nodes) == []


def test_a_pool_larger_than_the_cluster_runs_smaller_with_a_warning():
    nodes = [_node(4), _node(2, 1), _node(2, 1), _node(2, 0, alive=False)]
    problems = pool_problems(ActorsConfig(size=3, num_gpus=1, num_cpus=0.5), nodes)
    assert [p.fatal for p in problems] == [False]
    assert "wants 3 engine actors" in problems[0].message and "fit only 2" in problems[0].message
    assert pool_problems(ActorsConfig(min_size=1, max_size=8, num_gpus=1, num_cpus=0.5), nodes) == []


def test_fractional_gpus_pack_several_actors_per_device():
    problems = pool_problems(ActorsConfig(size=4, num_gpus=0.5, num_cpus=1), [_node(8, 1), _node(8, 1)])
    assert problems == []
    problems = pool_problems(ActorsConfig(size=5, num_gpus=0.5, num_cpus=1), [_node(8, 1), _node(8, 1)])
    assert [p.fatal for p in problems] == [False]


def test_the_default_local_cpu_job_fits():
    assert pool_problems(ActorsConfig(num_gpus=0), [_node(8)]) == []


def _gpu_less_env() -> dict[str, str]:
    env = {
        **os.environ,
        "RAY_TMPDIR": tempfile.mkdtemp(prefix="rr", dir="/tmp"),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "CUDA_VISIBLE_DEVICES": "",  # no GPU for the local Ray to find, even on a GPU machine
    }
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.mark.timeout(240)
def test_raytts_run_with_only_input_and_output_runs_on_a_gpu_less_machine(tiny_checkpoint: Path, tmp_path: Path):
    """`raytts run --input texts/ --output out/` on a laptop: the default `actors.num_gpus: auto` finds no GPU in
    the cluster, runs CPU engines and says so naming the setting (it exited 2 when the default was 1 GPU). What it
    prints is raytts's: the warning once, no Ray Data progress or execution plans (those go to Ray's session logs;
    an 11-row job printed ~40 lines of them), the driver's own INFO lines kept."""
    write_text_shards(tmp_path / "texts", 8, [])
    cmd = [sys.executable, "-m", "jobs.cli", "run", "--input", "texts", "--output", "out", "--model", str(tiny_checkpoint),
           "--set", "sampling.max_new_tokens=8"]  # fmt: skip
    done = subprocess.run(
        cmd, cwd=tmp_path, env=_gpu_less_env(), capture_output=True, text=True, timeout=200, start_new_session=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("the cluster has no GPUs, so the engine actors run on CPU (actors.num_gpus: auto") == 1
    assert "INFO pipeline.job: parsed 8 input rows" in done.stderr
    ray_data_lines = [line for line in done.stderr.splitlines() if "streaming_executor" in line or "Progress" in line]
    assert not ray_data_lines, ray_data_lines
    report = json.loads((tmp_path / "out" / "_report.json").read_text())
    assert report["status"] == "finished" and report["ok"] == 8 and report["failed"] == 0, report


@pytest.mark.timeout(180)
def test_raytts_run_with_gpu_actors_on_a_gpu_less_local_ray_exits_2_at_once(tiny_checkpoint: Path, tmp_path: Path):
    """An explicit `actors.num_gpus: 1` on a machine without GPUs still wins over auto: a clear error and exit 2,
    not a job stuck at 0 rows."""
    write_text_shards(tmp_path / "texts", 4, [])
    config = {
        "model": str(tiny_checkpoint),
        "inputs": {"text": [str(tmp_path / "texts")]},
        "output": {"path": str(tmp_path / "out")},
        "actors": {"num_gpus": 1},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "jobs.cli", "run", str(tmp_path / "job.yaml")]
    done = subprocess.run(cmd, env=_gpu_less_env(), capture_output=True, text=True, timeout=150, start_new_session=True)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "no node can host an engine actor (each needs num_gpus=1, num_cpus=1)" in done.stderr
    assert "set actors.num_gpus: 0" in done.stderr
    assert not (tmp_path / "out" / "parts").exists()
    status = json.loads((tmp_path / "out" / "_report.json").read_text())  # written first as "running"
    assert status["status"] == "failed" and status["error"].startswith("PoolDoesNotFit: no node can host")


def test_auto_gpus_follow_the_cluster_and_an_explicit_value_wins():
    from pipeline.resources import gpus_per_actor

    assert gpus_per_actor(ActorsConfig(), "auto", [_node(8, 2), _node(8)]) == (1.0, None)
    num_gpus, warning = gpus_per_actor(ActorsConfig(), "auto", [_node(8), _node(4, 1, alive=False)])
    assert num_gpus == 0.0 and "actors.num_gpus: 1" in warning
    assert gpus_per_actor(ActorsConfig(), "cuda", [_node(8)]) == (1.0, None)  # pinned to CUDA: the check refuses
    assert gpus_per_actor(ActorsConfig(), "cpu", [_node(8, 2)]) == (0.0, None)  # CPU engines hold no GPU
    assert gpus_per_actor(ActorsConfig(num_gpus=0.5), "auto", [_node(8)]) == (0.5, None)
    assert gpus_per_actor(ActorsConfig(num_gpus=0), "auto", [_node(8, 1)]) == (0.0, None)
    with pytest.raises(ValueError, match="num_gpus must be >= 0 or auto"):
        ActorsConfig(num_gpus=-1)


def test_replicas_sharing_a_device_split_its_memory():
    """Two 0.5-GPU actors that start together both see the whole device free; each must budget from its share.
    (Pure arithmetic: the CUDA calls that feed it cannot run here.)"""
    from actors.placement import shared_budget_bytes

    gib = 1 << 30
    # an 80 GiB device, half of it, 1 GiB of weights held, 67 GiB free-memory default: 0.85 * 40 - 1 = 33 GiB
    assert shared_budget_bytes(total=80 * gib, share=0.5, held=gib, free_budget=67 * gib) == int(0.85 * 40 * gib) - gib
    # the default stays the cap when less is free than the share would allow
    assert shared_budget_bytes(total=80 * gib, share=0.5, held=gib, free_budget=10 * gib) == 10 * gib
    # two halves never plan more than the device
    halves = 2 * shared_budget_bytes(total=80 * gib, share=0.5, held=gib, free_budget=80 * gib) + 2 * gib
    assert halves <= 80 * gib
    with pytest.raises(ValueError, match=r"larger GPU share \(actors.num_gpus of a job, deployment.num_gpus"):
        shared_budget_bytes(total=8 * gib, share=0.1, held=gib, free_budget=7 * gib)


def test_ray_tells_a_fractional_gpu_replica_its_share():
    """The share a replica budgets from (`assigned_gpu_share`, what Serve replicas pass as `device_share`) is the
    `num_gpus` Ray gave it: 0.5 for a half-GPU actor, 1.0 for whole GPUs, none, or outside Ray. The GPU here is a
    Ray resource only (no CUDA on this machine), which is all the lookup reads."""
    import ray

    from actors.placement import assigned_gpu_share

    if ray.is_initialized():
        ray.shutdown()
    tmp = tempfile.mkdtemp(prefix="rg", dir="/tmp")  # AF_UNIX socket paths must stay short
    ray.init(address="local", num_cpus=1, num_gpus=1, include_dashboard=False, _temp_dir=tmp, configure_logging=False)
    try:

        @ray.remote(num_cpus=0)
        def share() -> float:
            return assigned_gpu_share()

        shares = [share.options(num_gpus=n).remote() for n in (0.5, 0.25, 1, 0)]
        assert ray.get(shares, timeout=60) == [0.5, 0.25, 1.0, 1.0]
        assert assigned_gpu_share() == 1.0  # the driver (a stage built in-process, as in the fault tests)
    finally:
        ray.shutdown()
    assert assigned_gpu_share() == 1.0


def test_a_cpu_replica_budgets_half_of_the_tightest_memory_limit():
    """On CPU the budget is CPU_MEMORY_FRACTION of the tightest limit (available RAM, cgroup, Ray memory resource)
    times the actor's share of the node, and the text says which limit it came from. Pure arithmetic."""
    from actors.placement import CPU_MEMORY_FRACTION, cpu_budget_bytes

    gib = 1 << 30
    budget, why = cpu_budget_bytes({"available RAM": 20 * gib, "left under the cgroup memory limit": 6 * gib})
    assert budget == int(6 * gib * CPU_MEMORY_FRACTION) and why == "0.5 x 6.0 GiB left under the cgroup memory limit"
    budget, why = cpu_budget_bytes({"available RAM": 16 * gib}, (0.25, "this actor's 2 of the node's 8 CPUs"))
    assert budget == 2 * gib and why.endswith("x 0.25 (this actor's 2 of the node's 8 CPUs)")
    assert cpu_budget_bytes({"available RAM": -5})[0] == 0  # nothing left: plan_slots refuses with its own message
    assert cpu_budget_bytes({}) == (gib, "1 GiB: no memory information on this platform (set engine.budget_mib)")


def test_the_default_cpu_plan_fits_this_machine_and_holds_more_than_one_full_size_row():
    """The issue's first complaint: with the old fixed 1 GiB the full model planned 1 slot on CPU. The default now
    comes from this machine's memory: more than one slot of the full model at the default reservation, and never more
    than the memory it found."""
    import torch

    from actors.engine.memory import plan_slots
    from actors.model.config import ModelConfig
    from actors.placement import cpu_budget_bytes, cpu_memory_limits

    limits = cpu_memory_limits()
    assert 0 < limits["available RAM"] <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    budget, _ = cpu_budget_bytes(limits)
    plan = plan_slots(ModelConfig.from_name("full"), torch.float32, budget, 640, 2048)
    assert plan.slots > 1, (plan.slots, budget >> 20)
    assert plan.planned_bytes <= budget <= min(limits.values())


def test_a_ray_actor_budgets_from_its_cpu_share_or_its_memory_resource():
    """A CPU engine actor without a `memory` resource takes its CPUs' share of the node (so the node's actors together
    stay within the fraction); one with a `memory` resource is limited by what that leaves."""
    import ray

    from actors.placement import cpu_memory_limits, ray_cpu_share

    if ray.is_initialized():
        ray.shutdown()
    tmp = tempfile.mkdtemp(prefix="rm", dir="/tmp")
    ray.init(address="local", num_cpus=8, include_dashboard=False, _temp_dir=tmp, configure_logging=False)
    try:

        @ray.remote
        def seen() -> tuple[tuple[float, str], dict[str, int]]:
            return ray_cpu_share(), cpu_memory_limits()

        (share, _), _ = ray.get(seen.options(num_cpus=2).remote(), timeout=60)
        assert share == 0.25
        (share, why), limits = ray.get(seen.options(num_cpus=1, memory=3 << 30).remote(), timeout=60)
        assert share == 1.0 and why == ""
        assert 0 < limits["left of the Ray actor's memory resource"] < 3 << 30
        assert ray_cpu_share() == (1.0, "")  # the driver (raytts synth, a stage built in-process)
    finally:
        ray.shutdown()


@pytest.mark.parametrize(
    ("torch_cuda", "driver", "visible", "expected"),
    [
        ("13.0", "570.124.06", None, "needs an NVIDIA driver >= 580.65.06; this node's driver is 570.124.06"),
        ("13.0", None, None, "no NVIDIA driver was found"),
        ("12.8", "570.124.06", "", "CUDA_VISIBLE_DEVICES='' hides every GPU"),
        ("13.0", "580.95.05", None, "driver 580.95.05 is new enough"),
        (None, "580.95.05", None, "is a CPU-only build"),
    ],
)
def test_cuda_diagnosis_names_what_torch_needs_and_what_the_node_has(torch_cuda, driver, visible, expected):
    """The sentence an engine that cannot use CUDA fails with (no GPU here, so the torch build, driver version and
    CUDA_VISIBLE_DEVICES are given as values; the function reads nothing else)."""
    from actors.placement import explain_cuda

    text = explain_cuda("2.13.0", torch_cuda, driver, visible)
    assert expected in text, text
    if torch_cuda:
        assert f"built for CUDA {torch_cuda}" in text


def test_an_engine_asked_for_cuda_without_it_says_why(tmp_path):
    """On this CPU-only machine, for real: device cuda fails naming torch's build and what to do."""
    import torch

    from actors.placement import pick_device

    with pytest.raises(RuntimeError) as err:
        pick_device("cuda")
    assert "device 'cuda' was requested but" in str(err.value)
    if torch.version.cuda is None:
        assert "CPU-only build" in str(err.value)
    assert "run with device cpu" in str(err.value)


def test_driver_version_is_read_from_the_nvidia_proc_file_formats(tmp_path, monkeypatch):
    """/proc/driver/nvidia/version as the proprietary and the open kernel modules write it."""
    import actors.placement as placement

    lines = {
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023": "535.104.05",
        "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.95.05  Release Build  (dvs-builder@U16)": (
            "580.95.05"
        ),
    }
    for line, version in lines.items():
        (tmp_path / "version").write_text(line + "\nGCC version:  gcc version 12.2.0\n")
        monkeypatch.setattr(placement, "_read_text", lambda path, f=tmp_path / "version": f.read_text())
        assert placement.nvidia_driver_version() == version
