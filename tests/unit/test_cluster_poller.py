"""Ray Data's usage poller (ray.data._internal.usage.poller) must have nothing to poll in raytts processes: a poll
after `ray.shutdown()` ends the process with status 1 (seen in a fresh-clone CI run: the test process died after the
Serve tests' shutdown with "The core worker has already been shutdown ... The process will exit")."""

from __future__ import annotations


def test_the_disarmed_poller_polls_nothing_and_stays_disarmed():
    from ray.data._internal.usage import poller

    from actors.cluster import disarm_ray_data_usage_poller

    disarm_ray_data_usage_poller()  # tests/conftest.py did it already; doing it again keeps the same poller
    disarmed = poller.get_poller()
    assert disarmed._metrics == {}
    disarmed.poll_once()  # touches no Ray API: Ray is not even running here
    disarm_ray_data_usage_poller()
    assert poller.get_poller() is disarmed and disarmed._metrics == {}
