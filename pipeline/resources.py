"""Pre-flight check: can the Ray cluster host the job's engine actors and still run its CPU stages?

Ray Data neither fails nor warns when a pool's actors cannot be placed (it waits for resources that may never come),
and it also waits forever when the actors hold every logical CPU so no parse/repartition task can start. Both look
like a job that hangs at 0 rows. This check turns them into one clear message before anything runs: an error on a
local Ray (nothing will ever add resources there), a warning on a cluster (an autoscaler may still add nodes).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .config import ActorsConfig

# What the other stages hold while the engine actors run: one parse/repartition task (1 CPU) and one store actor
# (pipeline/job.py reserves STORE_ACTOR_CPUS for each store actor).
STORE_ACTOR_CPUS = 0.5
STAGE_TASK_CPUS = 1.0


@dataclass(frozen=True)
class PoolProblem:
    message: str
    fatal: bool  # the job cannot make progress (vs. it runs with fewer actors than asked)


def gpus_per_actor(
    actors: ActorsConfig, engine_device: str, nodes: Iterable[dict[str, Any]]
) -> tuple[float, str | None]:
    """The engine actors' `num_gpus`: as configured, or for `auto` one GPU each where the cluster has GPUs and CPU
    engines (0) where it has none, with the warning to show then. `engine.device: cpu` means 0; an engine pinned to
    CUDA keeps its GPU request (the pool check then says no node can host it)."""
    if actors.num_gpus != "auto":
        return float(actors.num_gpus), None
    if engine_device == "cpu":
        return 0.0, None  # CPU engines asked for: holding a GPU each would only keep it from others
    gpus = sum(n.get("Resources", {}).get("GPU", 0.0) for n in nodes if n.get("Alive", True))
    if gpus > 0 or engine_device.startswith("cuda"):
        return 1.0, None
    return 0.0, (
        "the cluster has no GPUs, so the engine actors run on CPU (actors.num_gpus: auto; CPU synthesis is far "
        "slower). Set actors.num_gpus: 1 to wait for GPU nodes instead (an autoscaling cluster whose GPU nodes "
        "start from zero), or actors.num_gpus: 0 to choose CPU engines and silence this warning"
    )


def actors_per_node(actors: ActorsConfig, resources: dict[str, float]) -> int:
    """How many engine actors one node with these total resources can host at once (num_gpus resolved)."""
    assert actors.num_gpus != "auto", "resolve actors.num_gpus with gpus_per_actor first"
    fits = []
    if actors.num_cpus > 0:
        fits.append(math.floor(resources.get("CPU", 0.0) / actors.num_cpus + 1e-9))
    if actors.num_gpus > 0:
        fits.append(math.floor(resources.get("GPU", 0.0) / actors.num_gpus + 1e-9))
    return min(fits) if fits else 1_000_000


def _node_summary(nodes: list[dict[str, Any]]) -> str:
    parts = []
    for node in nodes:
        res = node.get("Resources", {})
        parts.append(f"{node.get('NodeManagerAddress', '?')} (CPU {res.get('CPU', 0):g}, GPU {res.get('GPU', 0):g})")
    return ", ".join(parts) or "none"


def pool_problems(actors: ActorsConfig, nodes: Iterable[dict[str, Any]]) -> list[PoolProblem]:
    """Reasons the job's actor pool cannot run on these nodes (`ray.nodes()` entries); empty when it can.
    `actors.num_gpus` must be resolved (gpus_per_actor)."""
    alive = [n for n in nodes if n.get("Alive", True)]
    wanted = actors.size or actors.min_size or 1
    need = f"num_gpus={actors.num_gpus:g}, num_cpus={actors.num_cpus:g}"
    fit = sum(actors_per_node(actors, n.get("Resources", {})) for n in alive)
    if fit == 0:
        hint = (
            "set actors.num_gpus: 0 to run the engine on CPU, or add GPU nodes"
            if actors.num_gpus > 0
            else "lower actors.num_cpus or add nodes"
        )
        message = f"no node can host an engine actor (each needs {need}); nodes: {_node_summary(alive)}. To fix: {hint}"
        return [PoolProblem(message, fatal=True)]
    problems = []
    placed = min(wanted, fit)
    if fit < wanted:
        message = (
            f"the pool wants {wanted} engine actors ({need} each) but the nodes fit only {fit}; the job runs with "
            f"{fit}. Nodes: {_node_summary(alive)}"
        )
        problems.append(PoolProblem(message, fatal=False))
    total_cpus = sum(n.get("Resources", {}).get("CPU", 0.0) for n in alive)
    left = total_cpus - placed * actors.num_cpus
    if left < STORE_ACTOR_CPUS + STAGE_TASK_CPUS:
        message = (
            f"{placed} engine actors x num_cpus={actors.num_cpus:g} leave {left:g} of the cluster's {total_cpus:g} "
            f"CPUs; the parse and store stages need {STORE_ACTOR_CPUS + STAGE_TASK_CPUS:g} or Ray Data waits for "
            "them forever. To fix: lower actors.num_cpus (0 is fine when actors.num_gpus places them) or "
            "actors.size, or add CPUs"
        )
        problems.append(PoolProblem(message, fatal=True))
    return problems
