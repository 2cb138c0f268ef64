"""Serve's request limits from the engine's planned slots: how many requests a replica takes at once
(`max_ongoing_requests`), how many wait in Serve's queue, and when autoscaling adds a replica
(`target_ongoing_requests`), all following the rows one replica's engine runs at once.

A replica's slots are only certain once it has planned its memory on its own device; the app is built before that,
possibly on a machine without the GPU. So the slots are planned here the way the replica will plan them: the
engine's `max_slots` when set, the CPU default on CPU replicas, else the memory plan of the model (the official full
model unless a local checkpoint says otherwise) on the GPU the cluster reports (Ray's `accelerator_type`), or on a
24 GB GPU when it reports none (the smallest GPU the cluster configs use: fewer slots, so scaling starts early).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..engine.memory import plan_slots
from ..model.config import ModelConfig
from .config import DeploymentSpec, ServeConfig

log = logging.getLogger(__name__)

CPU_REPLICA_SLOTS = 64  # actors.replica.CPU_MAX_SLOTS, without importing the replica (and torch's models) here
# GPU memory by Ray accelerator type, MiB as the device reports it (what the replica's budget is planned from).
GPU_MIB = {"H200": 143_771, "H100": 81_559, "A100": 81_920, "L40S": 46_068, "L40": 46_068, "A10G": 23_028,
           "A10": 23_028, "L4": 23_034, "T4": 15_360, "V100": 16_384}  # fmt: skip
DEFAULT_GPU_MIB = 23_034  # an L4: the cluster configs' GPU
CUDA_CONTEXT_MIB = 600  # what the CUDA context and allocator take before the budget is planned


@dataclass(frozen=True)
class RequestLimits:
    slots: int
    why: str  # where the slot count came from
    max_ongoing_requests: int
    max_queued_requests: int
    target_ongoing_requests: float


def model_config(config: ServeConfig) -> ModelConfig:
    """The default model's config: a local checkpoint's own, else the official model's (the full preset)."""
    from ..checkpoint import read_model_config

    source = config.models[config.default_model].source
    if source == "tiny":
        return ModelConfig.from_name("tiny")
    asset = Path(source) / "asset"
    return read_model_config(asset) if asset.is_dir() else ModelConfig.from_name("full")


def gpu_slots(model: ModelConfig, gpu_mib: int, config: ServeConfig, share: float) -> int:
    """Rows the engine plans on `share` of a `gpu_mib` GPU (its weights in float16 held outside the budget)."""
    import torch

    from ..model.chattts import ChatTTSModel

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(config.engine.dtype or "", torch.float16)
    with torch.device("meta"):
        weights = sum(t.numel() * t.element_size() for t in ChatTTSModel(model).to(dtype).state_dict().values())
    budget = int(((gpu_mib - CUDA_CONTEXT_MIB) * 2**20 * share - weights) * config.engine.budget_fraction)
    plan = plan_slots(model, dtype, budget, config.engine.max_prompt_tokens, config.max_new_tokens)
    return plan.slots


def cluster_gpu_mib() -> tuple[int, str]:
    """The smallest GPU the cluster reports by accelerator type, or the default when it reports none."""
    try:
        import ray

        types = {key.split(":", 1)[1] for node in ray.nodes() if node.get("Alive")
                 for key in node.get("Resources", {}) if key.startswith("accelerator_type:")}  # fmt: skip
    except Exception:  # noqa: BLE001 - no Ray joined (config checks, tests): the default GPU
        types = set()
    known = sorted((GPU_MIB[t], t) for t in types if t in GPU_MIB)
    if known:
        return known[0][0], f"an {known[0][1]} (the cluster's smallest GPU)"
    return DEFAULT_GPU_MIB, "a 24 GB GPU (the cluster reports no GPU type)"


def request_limits(config: ServeConfig, spec: DeploymentSpec, num_gpus: float) -> RequestLimits:
    """The deployment's request limits: each one given in `spec`, or following the planned slots (a replica takes
    twice its slots, as many more wait in Serve's queue, and autoscaling adds a replica at half its slots)."""
    if config.engine.max_slots:
        slots, why = config.engine.max_slots, "engine.max_slots"
    elif num_gpus == 0:
        slots, why = CPU_REPLICA_SLOTS, "the CPU engine's default slots"
    else:
        gpu_mib, which = cluster_gpu_mib()
        slots = gpu_slots(model_config(config), gpu_mib, config, min(1.0, num_gpus))
        why = f"the memory plan of the default model on {which}"
    ongoing = spec.max_ongoing_requests or 2 * slots
    return RequestLimits(
        slots=slots,
        why=why,
        max_ongoing_requests=ongoing,
        max_queued_requests=spec.max_queued_requests or ongoing,
        target_ongoing_requests=spec.target_ongoing_requests or max(1.0, slots / 2),
    )
