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
    disarm_ray_data_usage_poller()
    try:
        yield RayConnection(owned=owned, local=local)
    finally:
        if owned:
            ray.shutdown()


def disarm_ray_data_usage_poller() -> None:
    """Ray Data 2.60 starts, with a process's first dataset, a daemon thread that polls cluster metrics every 10 s
    for the life of the process (`ray.data._internal.usage.poller`); a poll after `ray.shutdown()` reaches the core
    worker, and Ray then ends the whole process with status 1 ("The core worker has already been shutdown ... The
    process will exit"): a driver that prints its report after shutting Ray down, or a test process that starts
    Ray again, dies at random. The poller only feeds Ray's own usage statistics: give it nothing to poll."""
    from ray.data._internal.usage import poller

    with poller._poller_lock:
        if poller._poller is None:
            poller._poller = poller.ClusterMetricsPoller({})
        else:
            with poller._poller._lock:
                poller._poller._metrics = {}


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
