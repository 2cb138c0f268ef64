"""Where a replica runs and how much memory it may plan: device and dtype choice, its share of a shared GPU, and
the budget that follows. Torch is imported only by the functions that need it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def pick_device(device: str) -> torch.device:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} was requested but torch sees no CUDA device; use --device cpu")
    return torch.device(device)


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


def replica_budget_bytes(device: torch.device, share: float, fraction: float, weights: int) -> int:
    """The default budget of a replica on `device`: `fraction` of the free memory (1 GiB on CPU), or of its share of
    the device when it owns only part of it (less the `weights` it already holds there)."""
    import torch

    from .engine.memory import default_budget_bytes

    if device.type == "cuda" and share < 1:
        return shared_budget_bytes(
            total=torch.cuda.get_device_properties(device).total_memory,
            share=share,
            held=weights,
            free_budget=default_budget_bytes(device, fraction),
            fraction=fraction,
        )
    return default_budget_bytes(device, fraction)


def assigned_gpu_share() -> float:
    """The part of one GPU that Ray gave this worker: its fractional `num_gpus` (several replicas on one device), else
    1.0 (whole GPUs, no GPU, or not in a Ray worker: the driver has no assigned resources)."""
    import ray

    if not ray.is_initialized() or ray.get_runtime_context().worker.mode != ray.WORKER_MODE:
        return 1.0
    gpus = ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0)
    return gpus if 0 < gpus < 1 else 1.0
