"""The ray tier's shared local Ray: one per session for the job tests (started once, ~5 s, not once per module),
its workers seeing the loopback S3 server's credentials (set before they start). Tests that need a Ray of other
resources (test_resources, test_serve) start their own and leave it shut down."""

from __future__ import annotations

import os
import tempfile

import pytest


@pytest.fixture(scope="session")
def _session_ray(s3_server):
    import ray

    tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # AF_UNIX socket paths must stay short
    os.environ["RAY_TMPDIR"] = tmp
    os.environ.update(s3_server.env())
    yield tmp
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="module")
def local_ray(_session_ray):
    """The session's local Ray (8 logical CPUs); started again if a module before shut it down. Yields the address
    other drivers join."""
    import ray

    if not ray.is_initialized() or ray.get_runtime_context().gcs_address is None:
        ray.init(address="local", num_cpus=8, include_dashboard=False, _temp_dir=_session_ray, configure_logging=False)
    yield ray.get_runtime_context().gcs_address
