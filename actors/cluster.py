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
        _quiet_ray_data_console()
    owned = not ray.is_initialized()
    local = owned and not address and not os.environ.get("RAY_ADDRESS")
    options = {"logging_config": ray.LoggingConfig(log_level="WARNING"), "log_to_driver": True} if quiet else {}
    root = logging.getLogger()
    driver_logging = (root.level, list(root.handlers))
    if owned:
        if address:
            ray.init(address=address, **options)
        elif os.environ.get("RAY_ADDRESS"):
            ray.init(**options)  # inside `ray job submit`: the job's cluster
        else:
            ray.init(address="local", num_cpus=max(local_cpus, os.cpu_count() or 1), **options)
    if quiet:  # the LoggingConfig is for the workers; on this driver it would print every warning twice
        _restore_root_logger(*driver_logging)
    try:
        yield RayConnection(owned=owned, local=local)
    finally:
        if owned:
            ray.shutdown()


def _quiet_ray_data_console() -> None:
    """Ray Data gives its logger its own console handler at INFO (per-operator progress, execution plans) and does
    not propagate: raise that handler to WARNING. Its file handler (the session's ray-data.log) keeps everything."""
    import ray.data  # noqa: F401  (importing it configures the 'ray.data' logger)

    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setLevel(logging.WARNING)


def _restore_root_logger(level: int, handlers: list[logging.Handler]) -> None:
    """Undo what `ray.init(logging_config=...)` does to the driver's root logger (a second console handler, the
    level raised to WARNING), so this process's own log lines print once and at the level it chose."""
    root = logging.getLogger()
    root.setLevel(level)
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
