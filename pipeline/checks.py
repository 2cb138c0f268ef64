"""Checks before any synthesis: the output can be written, the engine actor pool fits the cluster (with
`actors.num_gpus: auto` resolved), and a local output folder on a multi-node cluster is called out."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow as pa
import pyarrow.fs as pafs

from .config import JobConfig
from .lease import OutputLease
from .parts import filesystem
from .resources import gpus_per_actor, pool_problems

log = logging.getLogger(__name__)


class PoolDoesNotFit(ValueError):
    """The engine actor pool cannot run on this Ray: raised before the job reads or writes anything."""


class ModelUnusable(ValueError):
    """The job's model cannot be resolved or read: raised before the engine actors start."""


class OutputUnusable(ValueError):
    """The output location cannot be written or listed: raised before any synthesis."""


def check_output(config: JobConfig) -> None:
    """Fail before any synthesis when the output cannot take parts (pyarrow) or audio files (smart-open). Whether
    it takes writes (credentials, a read-only or missing bucket) is found by taking its lease and `mark_running`."""
    output = config.output.path.rstrip("/")
    try:
        filesystem(output)
    except (pa.ArrowException, OSError) as err:
        raise OutputUnusable(
            f"output.path {output!r}: Parquet parts cannot be written there ({err}); use a local folder or an "
            f"s3:// or gs:// URI"
        ) from err
    if config.output.audio_files and "://" in output:
        from smart_open.transport import get_transport

        scheme = output.split("://", 1)[0]
        try:
            get_transport(scheme)
        except (ImportError, NotImplementedError) as err:
            raise OutputUnusable(
                f"output.path {output!r}: audio files cannot be written to {scheme}:// ({err}); install smart-open's "
                f"extra for it (e.g. pip install 'smart-open[gcs]') or set output.audio_files: false"
            ) from err


@contextmanager
def hold_output(output: str) -> Iterator[OutputLease]:
    """The output's lease (`pipeline.lease`), held for the block: raises OutputBusy when another driver holds it,
    OutputUnusable when it cannot be written there."""
    import ray

    lease = OutputLease(output, ray_job=ray.get_runtime_context().get_job_id() if ray.is_initialized() else None)
    try:
        lease.acquire()
    except OSError as err:
        raise OutputUnusable(
            f"output.path {output!r}: cannot take its lease there ({err}); check that the location exists and that "
            f"this machine's credentials may write there"
        ) from err
    try:
        yield lease
    finally:
        try:
            lease.release()
        except OSError as err:
            log.warning("could not release the lease of %s (%s); the next run takes it over", output, err)


def mark_running(output: str) -> dict[str, str]:
    """Write `_report.json` as running (the job overwrites it with the final report), which also probes that the
    location takes writes: a job that died leaves a report saying so. The last run's `manifest.jsonl` is removed:
    only a run that finishes writes one, so a manifest never lists another run's rows. Called once the job holds
    the output; returns the running status (the job adds what it plans to it)."""
    fs, base = filesystem(output)
    status = {"status": "running", "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "output": output}
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            fs.create_dir(base, recursive=True)
        with fs.open_output_stream(f"{base}/_report.json") as f:
            f.write(json.dumps(status).encode() + b"\n")
        if fs.get_file_info(f"{base}/manifest.jsonl").type == pafs.FileType.File:
            fs.delete_file(f"{base}/manifest.jsonl")
    except (pa.ArrowException, OSError) as err:
        raise OutputUnusable(
            f"output.path {output!r}: writing {output}/_report.json failed ({err}); check that the location exists "
            f"and that this machine's and the Ray workers' credentials may write there"
        ) from err
    return status


def with_actor_gpus(config: JobConfig) -> JobConfig:
    """The config with `actors.num_gpus` resolved against the cluster this process joined (auto -> 1 or 0)."""
    import ray

    num_gpus, warning = gpus_per_actor(config.actors, config.engine.device, ray.nodes())
    if warning:
        log.warning("actor pool: %s", warning)
    return config.model_copy(update={"actors": config.actors.model_copy(update={"num_gpus": num_gpus})})


def check_pool(config: JobConfig, local: bool) -> None:
    """Refuse (local Ray) or warn (cluster: an autoscaler may still add nodes) when the engine actors cannot be
    placed or would leave the CPU stages no CPU; Ray Data itself would just wait at 0 rows forever."""
    import ray

    problems = pool_problems(config.actors, ray.nodes())
    fatal = [p.message for p in problems if p.fatal]
    if fatal and local:
        raise PoolDoesNotFit("; ".join(fatal) + " (this is a local Ray: nothing will add resources to it)")
    for problem in problems:
        suffix = "; waiting for the cluster to add resources (the job stalls if it never does)" if problem.fatal else ""
        log.warning("actor pool: %s%s", problem.message, suffix)


def warn_if_local_output_on_a_cluster(config: JobConfig) -> None:
    import ray

    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    if "://" not in config.output.path and nodes > 1:
        log.warning(
            "output.path %s is a local folder and this Ray has %d nodes: every node writes its parts and audio there, "
            "so it must be one shared filesystem (e.g. NFS) mounted at the same path on every node; otherwise the "
            "driver does not see other nodes' output and a re-run redoes those rows. Use an s3:// or gs:// URI.",
            config.output.path, nodes,
        )  # fmt: skip
