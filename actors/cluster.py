"""Joining Ray, the same way for every command that needs it (`raytts run`, `raytts serve`): the given address, the
cluster of `ray job submit` (RAY_ADDRESS), the Ray this process already joined, or a local Ray it starts and stops."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class RayConnection:
    owned: bool  # this process started or joined Ray and shuts it down at the end
    local: bool  # a local Ray this process started: nothing else will add resources to it


@contextmanager
def joined_ray(address: str | None, local_cpus: int, quiet: bool = False) -> Iterator[RayConnection]:
    """Ray for the duration of the block. A local Ray gets at least `local_cpus` logical CPUs: the engine actors
    must never take every CPU from the tasks that read and write (a 2-core machine would otherwise deadlock the
    streaming executor); torch threads are set per actor, not from these. `quiet`: Ray's and Ray Data's own INFO
    lines (start-up, per-operator progress, workers' INFO logs) are not shown; warnings and errors are."""
    import ray

    if quiet:
        logging.getLogger("ray").setLevel(logging.WARNING)
    owned = not ray.is_initialized()
    local = owned and not address and not os.environ.get("RAY_ADDRESS")
    options = {"logging_config": ray.LoggingConfig(log_level="WARNING"), "log_to_driver": True} if quiet else {}
    if owned:
        if address:
            ray.init(address=address, **options)
        elif os.environ.get("RAY_ADDRESS"):
            ray.init(**options)  # inside `ray job submit`: the job's cluster
        else:
            ray.init(address="local", num_cpus=max(local_cpus, os.cpu_count() or 1), **options)
    try:
        yield RayConnection(owned=owned, local=local)
    finally:
        if owned:
            ray.shutdown()
