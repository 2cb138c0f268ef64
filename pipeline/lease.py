"""One writer per output: a lease object `{output}/_lease.json` that a job's driver holds while it runs.

A second driver on the same output refuses, naming the holder (host, pid, Ray job, start time). The holder renews
the lease every `ttl_s / 4` seconds from a background thread; a lease whose holder stopped renewing for `ttl_s`, or
whose holder process is gone from this machine, is stale and the next driver takes it over. Every change is
conditional where the store offers it, so two drivers taking over one stale lease cannot both win:
- local folders: read, check and write under a POSIX record lock (fcntl, honoured by NFS) on `_lease.lock`;
- S3 (and S3-compatible stores): `If-None-Match: *` to create, `If-Match: <etag>` to renew, take over or release;
- other object stores: write, then read back after a pause (best effort, logged once).
The store stage checks the lease's token before each part it writes (`LeaseToken.check`), so a driver that lost
its lease (paused past its ttl while another took over) cannot keep writing into the output.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from .lease_stores import store_for

log = logging.getLogger(__name__)

DEFAULT_TTL_S = float(os.environ.get("RAYTTS_LEASE_TTL_S", "60"))


class OutputBusy(RuntimeError):
    """Another driver holds the output's lease."""


class LeaseLost(RuntimeError):
    """This driver's lease was taken over (it stopped renewing for longer than its ttl)."""


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat): with the boot id, it tells
    a live holder from a new process that reuses its pid. Empty where /proc is not there."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def holder_alive(record: dict[str, Any]) -> bool | None:
    """Whether the lease's holder process still runs: True/False when it ran on this machine (same boot), None when
    that cannot be told here (another machine)."""
    if record.get("host") != socket.gethostname() or record.get("boot") != _boot_id() or not _boot_id():
        return None
    pid = int(record.get("pid", -1))
    return pid > 0 and _process_start(pid) == record.get("pid_start")


def describe(record: dict[str, Any]) -> str:
    age = time.time() - float(record.get("renewed", 0))
    return (
        f"host {record.get('host')} pid {record.get('pid')} (Ray job {record.get('ray_job') or '?'}, started "
        f"{record.get('started')}, renewed {age:.0f} s ago, ttl {record.get('ttl_s')} s)"
    )


def is_stale(record: dict[str, Any], now: float | None = None) -> bool:
    alive = holder_alive(record)
    if alive is False:
        return True
    return (now or time.time()) - float(record.get("renewed", 0)) > float(record.get("ttl_s", DEFAULT_TTL_S))


@dataclass(frozen=True)
class LeaseToken:
    """What the store actors carry to check that their driver still holds the output (`check` before each part)."""

    output: str
    token: str

    def check(self) -> None:
        record, _ = store_for(self.output).read()
        if record is None or record.get("token") != self.token:
            holder = describe(record) if record else "nobody"
            raise LeaseLost(
                f"{self.output}: this job's driver no longer holds the output's lease (now held by {holder}); "
                f"stopping rather than write into an output another driver owns"
            )


class OutputLease:
    """The lease of one output location, held from `acquire` to `release` (or as a context manager)."""

    def __init__(self, output: str, ttl_s: float = DEFAULT_TTL_S, ray_job: str | None = None) -> None:
        self.output = output.rstrip("/")
        self.ttl_s = ttl_s
        self.store = store_for(self.output)
        self.token = uuid.uuid4().hex
        self.ray_job = ray_job
        self.took_over: dict[str, Any] | None = None  # the stale record this driver replaced, if any
        self.lost: LeaseLost | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> dict[str, Any]:
        return {
            "token": self.token,
            "host": socket.gethostname(),
            "boot": _boot_id(),
            "pid": os.getpid(),
            "pid_start": _process_start(os.getpid()),
            "ray_job": self.ray_job,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "renewed": time.time(),
            "ttl_s": self.ttl_s,
            "command": " ".join(sys.argv)[:500],
        }

    @property
    def token_for_workers(self) -> LeaseToken:
        return LeaseToken(self.output, self.token)

    def acquire(self) -> None:
        """Take the lease, or raise OutputBusy naming its live holder. A stale lease is taken over (logged)."""
        mine = self._record()
        for _ in range(5):  # a race lost to another driver taking over the same stale lease: look again
            if self.store.create(mine):
                break
            current, version = self.store.read()
            if current is None:
                continue  # released between our create and read
            if not is_stale(current):
                raise OutputBusy(
                    f"output {self.output} is being written by another raytts driver: {describe(current)}. Wait for "
                    f"it to finish, or stop it; a driver that died is taken over once its lease is {self.ttl_s:.0f} "
                    f"s old (at once when it ran on this machine)"
                )
            if self.store.take_over(version, mine):
                self.took_over = current
                log.warning("took over the output's lease from a driver that stopped: %s", describe(current))
                break
        else:
            raise OutputBusy(f"output {self.output}: could not take its lease after 5 tries (other drivers racing)")
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew_loop, name="raytts-lease", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                self.renew()
            except LeaseLost as err:
                self.lost = err
                log.error("%s", err)
                return
            except OSError as err:  # a transient store error: try again at the next beat
                log.warning("renewing the output's lease failed (%s); retrying", err)

    def renew(self) -> None:
        current, version = self.store.read()
        if current is None or current.get("token") != self.token:
            raise LeaseLost(
                f"output {self.output}: this driver's lease was taken over by "
                f"{describe(current) if current else 'nobody (it was deleted)'}; this run stops"
            )
        if not self.store.renew(version, {**current, "renewed": time.time()}):
            raise LeaseLost(f"output {self.output}: this driver's lease changed while it was renewed; this run stops")

    def check(self) -> None:
        """Raise LeaseLost when the renewing thread found the lease taken over."""
        if self.lost is not None:
            raise self.lost

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        current, version = self.store.read()
        if current is not None and current.get("token") == self.token:
            self.store.delete(version)

    def __enter__(self) -> OutputLease:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
