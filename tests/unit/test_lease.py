"""One writer per output (`pipeline.lease`): on a local folder and on a real S3 server (SeaweedFS on loopback, which
honours If-None-Match / If-Match), a second driver is refused naming the first, a stale or dead driver's lease is
taken over by exactly one of several racing drivers, and the driver that lost its lease finds out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from pipeline.lease import LeaseLost, LeaseToken, OutputBusy, OutputLease
from pipeline.lease_stores import store_for


@pytest.fixture(params=["local", "s3"])
def output(request, tmp_path, monkeypatch):
    if request.param == "local":
        return str(tmp_path / "out")
    server = request.getfixturevalue("s3_server")
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    bucket = f"lease-{os.getpid()}-{time.monotonic_ns() % 10**9}"
    server.client().create_bucket(Bucket=bucket)
    return f"s3://{bucket}/out"


def _age(output: str, seconds: float, pid: int | None = None) -> None:
    """Make the lease look `seconds` old (and, with `pid`, held by that process) as a stopped driver leaves it."""
    store = store_for(output)
    record, version = store.read()
    record["renewed"] -= seconds
    if pid is not None:
        record["pid"], record["pid_start"] = pid, "1"
    assert store.renew(version, record)


def test_a_second_driver_is_refused_naming_the_first_until_it_releases(output):
    first = OutputLease(output, ttl_s=30, ray_job="01000000")
    first.acquire()
    try:
        with pytest.raises(OutputBusy, match=rf"pid {os.getpid()} \(Ray job 01000000"):
            OutputLease(output, ttl_s=30).acquire()
    finally:
        first.release()
    again = OutputLease(output, ttl_s=30)
    again.acquire()
    again.release()
    assert store_for(output).read()[0] is None


def test_a_stale_lease_is_taken_over_and_its_holder_finds_out(output):
    first = OutputLease(output, ttl_s=5)
    first.acquire()
    first._stop.set()  # the holder stops renewing, as a paused driver does
    _age(output, 60, pid=os.getpid() + 10**6)  # and it ran on another process that is no more
    second = OutputLease(output, ttl_s=5)
    second.acquire()
    try:
        assert second.took_over is not None and second.took_over["token"] == first.token
        with pytest.raises(LeaseLost, match="taken over"):
            first.renew()
        with pytest.raises(LeaseLost, match="no longer holds"):
            first.token_for_workers.check()
        second.token_for_workers.check()
    finally:
        second.release()
        first.release()  # a lost lease is not released (it is not ours)


def test_a_live_lease_on_another_machine_waits_for_its_ttl(output):
    first = OutputLease(output, ttl_s=300)
    first.acquire()
    try:
        store = store_for(output)
        record, version = store.read()
        assert store.renew(version, {**record, "host": "another-machine"})
        with pytest.raises(OutputBusy, match="host another-machine"):
            OutputLease(output, ttl_s=300).acquire()
    finally:
        first._stop.set()


def test_exactly_one_of_several_racing_drivers_takes_over_a_stale_lease(output):
    stopped = OutputLease(output, ttl_s=1)
    stopped.acquire()
    stopped._stop.set()  # it renews no more
    time.sleep(0.5)
    _age(output, 60)
    for round_ in range(3):
        winners, refused = [], []

        def take(winners: list = winners, refused: list = refused) -> None:
            lease = OutputLease(output, ttl_s=60)
            try:
                lease.acquire()
                winners.append(lease)
            except OutputBusy:
                refused.append(lease)

        threads = [threading.Thread(target=take) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(winners) == 1 and len(refused) == 5, (round_, len(winners))
        assert store_for(output).read()[0]["token"] == winners[0].token
        winners[0]._stop.set()
        _age(output, 600)


def test_a_killed_drivers_lease_is_taken_over_at_once_on_its_machine(tmp_path):
    """A driver killed on this machine leaves a lease younger than its ttl; its process is gone, so the next
    driver takes over without waiting."""
    output = str(tmp_path / "out")
    script = (
        "import sys, time; from pipeline.lease import OutputLease; "
        "OutputLease(sys.argv[1], ttl_s=600).acquire(); print('held', flush=True); time.sleep(600)"
    )
    holder = subprocess.Popen([sys.executable, "-c", script, output], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputBusy, match=f"pid {holder.pid} "):
            OutputLease(output, ttl_s=600).acquire()
        holder.kill()
        holder.wait(timeout=30)
        lease = OutputLease(output, ttl_s=600)
        lease.acquire()
        assert lease.took_over["pid"] == holder.pid
        lease.release()
    finally:
        holder.kill()


def test_a_torn_lease_file_is_stale(tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "_lease.json").write_bytes(b'{"token": "half a re')
    lease = OutputLease(str(output), ttl_s=60)
    lease.acquire()
    assert json.loads((output / "_lease.json").read_text())["token"] == lease.token
    lease.release()


def test_leasetoken_is_what_store_actors_carry():
    token = LeaseToken("/nowhere/out", "abc")
    with pytest.raises(LeaseLost, match="now held by nobody"):
        token.check()


def test_racing_driver_processes_on_one_folder_leave_one_holder(tmp_path):
    """Drivers are processes: the folder's record lock (not only the in-process one) decides the race."""
    output = str(tmp_path / "out")
    stale = OutputLease(output, ttl_s=1)
    stale.acquire()
    stale._stop.set()
    time.sleep(0.5)
    _age(output, 60)
    script = (
        "import sys, time; from pipeline.lease import OutputBusy, OutputLease\n"
        "time.sleep(float(sys.argv[2]) - time.time())\n"
        "try:\n    OutputLease(sys.argv[1], ttl_s=600).acquire(); print('won', flush=True); time.sleep(5)\n"
        "except OutputBusy:\n    print('refused', flush=True)\n"
    )
    start = str(time.time() + 3)
    drivers = [subprocess.Popen([sys.executable, "-c", script, output, start], stdout=subprocess.PIPE, text=True)
               for _ in range(4)]  # fmt: skip
    try:
        answers = sorted(d.stdout.readline().strip() for d in drivers)
    finally:
        for driver in drivers:
            driver.kill()
    assert answers == ["refused", "refused", "refused", "won"], answers
