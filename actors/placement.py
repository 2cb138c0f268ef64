"""Where a replica runs and how much memory it may plan: device and dtype choice, its share of a shared GPU or of a
CPU node, and the budget that follows (with where each number came from, for the replica's start-up line). Torch is
imported only by the functions that need it."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def pick_device(device: str) -> torch.device:
    """The torch device for `device`. "auto": CUDA when torch can use a GPU, else the CPU (with a warning that says why CUDA is unusable when Ray
    gave this worker GPUs: a driver too old for torch's CUDA build, say, or fake GPUs in a test cluster). "cuda[:N]"
    without a usable CUDA is an error saying why (`cuda_diagnosis`); GPU deployments set device: cuda."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _ray_assigned("GPU"):
            log.warning(
                "Ray gave this worker %g GPU(s) but %s; running on the CPU (engine.device: cuda makes this an error)",
                _ray_assigned("GPU"),
                cuda_diagnosis(),
            )
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} was requested but {cuda_diagnosis()}; or run with device cpu")
    return torch.device(device)


# The oldest Linux driver each CUDA major version runs on (NVIDIA's CUDA compatibility table, minor-version
# compatibility: any CUDA 12.x runtime on >= 525.60.13, 13.x on >= 580.65.06).
MIN_DRIVER = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}


def nvidia_driver_version() -> str | None:
    """The host's NVIDIA kernel driver version (e.g. "570.124.06") from /proc/driver/nvidia/version, which the NVIDIA
    container runtime exposes; None without a driver."""
    text = _read_text(Path("/proc/driver/nvidia/version"))
    match = re.search(r"Kernel Module(?: for [^ ]+)?\s+([0-9]+(?:\.[0-9]+)+)", text or "")
    return match.group(1) if match else None


def cuda_diagnosis() -> str:
    """Why torch cannot use CUDA in this process: `explain_cuda` of this torch build, the host's driver
    (`nvidia_driver_version`) and CUDA_VISIBLE_DEVICES."""
    import torch

    return explain_cuda(
        torch.__version__, torch.version.cuda, nvidia_driver_version(), os.environ.get("CUDA_VISIBLE_DEVICES")
    )


def explain_cuda(torch_version: str, torch_cuda: str | None, driver: str | None, visible: str | None) -> str:
    """A sentence saying what a torch build for CUDA `torch_cuda` (None: a CPU build) needs and what was found: the
    NVIDIA driver version `driver` (None: no driver) and CUDA_VISIBLE_DEVICES `visible` (None: unset)."""
    if not torch_cuda:
        return (
            f"torch {torch_version} is a CPU-only build: install a CUDA build (the raytts GPU image, "
            "cluster/image/requirements-gpu.lock)"
        )
    need = MIN_DRIVER.get(int(torch_cuda.split(".")[0]))
    wants = f"torch {torch_version} is built for CUDA {torch_cuda}" + (
        f", which needs an NVIDIA driver >= {need}" if need else ""
    )
    if visible is not None and visible.strip() in ("", "-1", "none", "void", "NoDevFiles"):
        return f"{wants}; CUDA_VISIBLE_DEVICES={visible!r} hides every GPU from this process"
    if driver is None:
        return (
            f"{wants}; no NVIDIA driver was found (no /proc/driver/nvidia/version): run on a GPU node with the "
            "driver and the NVIDIA container runtime / device plugin"
        )
    if need and _version_tuple(driver) < _version_tuple(need):
        return (
            f"{wants}; this node's driver is {driver}: use a node image with driver >= {need} (or a torch build "
            "for an older CUDA)"
        )
    return f"{wants}; driver {driver} is new enough, yet torch.cuda.is_available() is False (see torch's warning)"


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"[0-9]+", version))


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def pick_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    import torch

    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in table:
        raise ValueError(f"dtype must be one of {sorted(table)}, got {dtype!r}")
    return table[dtype]


def shared_budget_bytes(total: int, share: float, held: int, free_budget: int, fraction: float = 0.85) -> int:
    """Budget of a replica that owns `share` of a device of `total` bytes and already holds `held` (its weights):
    `fraction` of its share, less what it holds, and never more than the free-memory default `free_budget`. Without
    this, replicas that start together on one device would each plan 85% of the whole device's free memory."""
    budget = min(int(total * share * fraction) - held, free_budget)
    if budget <= 0:
        raise ValueError(
            f"a {share:g} share of this device ({total * share / 2**30:.1f} GiB) leaves no memory budget after the "
            f"replica's {held / 2**30:.1f} GiB of weights; give each replica a larger GPU share (actors.num_gpus "
            f"of a job, deployment.num_gpus of a Serve app), hold fewer models per Serve replica, or set "
            f"engine.budget_mib"
        )
    return budget


# On CPU the KV cache lives in the same RAM as everything else on the machine (Ray's object store, the job's CPU
# stages, other replicas): a replica plans half of the memory it may use, not the GPU's 85%.
CPU_MEMORY_FRACTION = 0.5


def replica_budget_bytes(device: torch.device, share: float, fraction: float, weights: int) -> tuple[int, str]:
    """(bytes, where they came from) of a replica's default budget on `device`. CUDA: `fraction` of the free memory,
    or of its `share` of the device when it owns only part of it (less the `weights` it already holds there). CPU:
    `cpu_budget_bytes`."""
    import torch

    from .engine.memory import default_budget_bytes

    if device.type != "cuda":
        return cpu_budget_bytes(cpu_memory_limits(), ray_cpu_share())
    if share < 1:
        total = torch.cuda.get_device_properties(device).total_memory
        budget = shared_budget_bytes(total, share, weights, default_budget_bytes(device, fraction), fraction)
        return (
            budget,
            f"{fraction:g} of a {share:g} share of {total / 2**30:.1f} GiB, less {weights / 2**20:.0f} MiB weights",
        )
    return default_budget_bytes(device, fraction), f"{fraction:g} of the free memory of {device}"


def cpu_budget_bytes(limits: dict[str, int], share: tuple[float, str] = (1.0, "")) -> tuple[int, str]:
    """(bytes, where they came from) of a CPU replica's budget: CPU_MEMORY_FRACTION of the tightest of `limits`
    (`cpu_memory_limits`: memory this process may still use, after its weights are loaded) times its `share` of the
    node (`ray_cpu_share`). 1 GiB where nothing is known (not Linux)."""
    if not limits:
        return 1 << 30, "1 GiB: no memory information on this platform (set engine.budget_mib)"
    name, free = min(limits.items(), key=lambda item: item[1])
    fraction, (node_share, why) = CPU_MEMORY_FRACTION, share
    budget = int(max(free, 0) * fraction * node_share)
    text = f"{fraction:g} x {free / 2**30:.1f} GiB {name}"
    return budget, text + (f" x {node_share:.3g} ({why})" if node_share < 1 else "")


def cpu_memory_limits() -> dict[str, int]:
    """Bytes this process may still take, by what limits it: the RAM the kernel reports available
    (/proc/meminfo MemAvailable), the container's cgroup limit less its usage (v2, else v1), and the Ray actor's
    `memory` resource less what this process already holds. Read from the kernel's files: three numbers do not
    warrant a dependency."""
    limits: dict[str, int] = {}
    meminfo = _read_ints(Path("/proc/meminfo"), "MemAvailable:")
    if meminfo is not None:
        limits["available RAM"] = meminfo * 1024
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        limit, usage = _read_ints(Path(limit_file)), _read_ints(Path(usage_file))
        if limit is not None and usage is not None and limit < 1 << 60:  # "max" / a huge v1 default: no limit
            limits["left under the cgroup memory limit"] = limit - usage
            break
    ray_memory = _ray_assigned("memory")
    if ray_memory:
        limits["left of the Ray actor's memory resource"] = int(ray_memory) - _rss_bytes()
    return limits


def ray_cpu_share() -> tuple[float, str]:
    """(share, why) of its node's memory a Ray worker without a `memory` resource budgets from: its CPUs over the
    node's (at least one CPU's worth), so the engine actors of one node together stay within the fraction. 1.0 outside
    Ray workers and for actors with a memory resource (that limit is `cpu_memory_limits`')."""
    import ray

    if not ray.is_initialized() or ray.get_runtime_context().worker.mode != ray.WORKER_MODE:
        return 1.0, ""
    if _ray_assigned("memory"):
        return 1.0, ""
    node_id = ray.get_runtime_context().get_node_id()
    node_cpus = next((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n["NodeID"] == node_id), 0.0)
    cpus = max(_ray_assigned("CPU") or 0.0, 1.0)
    if node_cpus <= cpus:
        return 1.0, ""
    return cpus / node_cpus, f"this actor's {cpus:g} of the node's {node_cpus:g} CPUs"


def _ray_assigned(resource: str) -> float | None:
    import ray

    if not ray.is_initialized() or ray.get_runtime_context().worker.mode != ray.WORKER_MODE:
        return None
    return ray.get_runtime_context().get_assigned_resources().get(resource)


def _read_ints(path: Path, key: str | None = None) -> int | None:
    """The integer in a kernel file (or on its `key` line); None when absent, unreadable or not a number."""
    try:
        text = path.read_text()
    except OSError:
        return None
    if key is not None:
        text = next((line[len(key) :] for line in text.splitlines() if line.startswith(key)), "")
    word = text.split()[0] if text.split() else ""
    return int(word) if word.isdigit() else None


def _rss_bytes() -> int:
    try:
        resident = int(Path("/proc/self/statm").read_text().split()[1])  # size, resident, ... in pages
    except (OSError, IndexError, ValueError):
        return 0
    return resident * os.sysconf("SC_PAGE_SIZE")


def assigned_gpu_share() -> float:
    """The part of one GPU that Ray gave this worker: its fractional `num_gpus` (several replicas on one device), else
    1.0 (whole GPUs, no GPU, or not in a Ray worker: the driver has no assigned resources)."""
    import ray

    if not ray.is_initialized() or ray.get_runtime_context().worker.mode != ray.WORKER_MODE:
        return 1.0
    gpus = ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0)
    return gpus if 0 < gpus < 1 else 1.0
