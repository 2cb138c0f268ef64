"""Where a lease record lives (`pipeline.lease`): conditional create / read / take over / renew / delete of one small
JSON object, per kind of output location. Each `read` returns (record or None, version); the version is what the
conditional operations compare against (the file's bytes locally, the object's ETag on S3)."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

log = logging.getLogger(__name__)

LEASE_NAME = "_lease.json"


def lease_json(record: dict[str, Any]) -> bytes:
    return json.dumps(record, ensure_ascii=False).encode() + b"\n"


class LeaseStore(Protocol):
    def read(self) -> tuple[dict[str, Any] | None, Any]: ...
    def create(self, record: dict[str, Any]) -> bool: ...
    def take_over(self, version: Any, record: dict[str, Any]) -> bool: ...
    def renew(self, version: Any, record: dict[str, Any]) -> bool: ...
    def delete(self, version: Any) -> None: ...


def _parse(data: bytes) -> dict[str, Any]:
    """A lease record; a torn or foreign file reads as a record nobody renews (stale at once)."""
    try:
        record = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return {"renewed": 0, "ttl_s": 0, "host": "?", "pid": -1}
    return record if isinstance(record, dict) else {"renewed": 0, "ttl_s": 0}


_THREADS = threading.Lock()


class LocalLeaseStore:
    """A local (or shared POSIX) folder: every change reads, checks and writes under a POSIX record lock on
    `_lease.lock` (fcntl, which NFS honours), and replaces the lease file by an atomic rename."""

    def __init__(self, folder: str) -> None:
        self.folder = os.path.abspath(folder)
        self.path = os.path.join(self.folder, LEASE_NAME)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        os.makedirs(self.folder, exist_ok=True)
        with _THREADS:  # record locks are per process: threads of one process take turns here
            fd = os.open(os.path.join(self.folder, "_lease.lock"), os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # closing drops the lock

    def read(self) -> tuple[dict[str, Any] | None, Any]:
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None, None
        return _parse(data), data

    def _write(self, record: dict[str, Any]) -> None:
        temporary = f"{self.path}.{uuid.uuid4().hex}.tmp"
        with open(temporary, "wb") as f:
            f.write(lease_json(record))
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, self.path)

    def create(self, record: dict[str, Any]) -> bool:
        with self._locked():
            if os.path.exists(self.path):
                return False
            self._write(record)
            return True

    def _replace(self, version: Any, record: dict[str, Any]) -> bool:
        with self._locked():
            if self.read()[1] != version:
                return False
            self._write(record)
            return True

    def take_over(self, version: Any, record: dict[str, Any]) -> bool:
        return self._replace(version, record)

    def renew(self, version: Any, record: dict[str, Any]) -> bool:
        return self._replace(version, record)

    def delete(self, version: Any) -> None:
        with self._locked():
            if self.read()[1] == version:
                os.unlink(self.path)


class S3LeaseStore:
    """S3 and S3-compatible stores through boto3: If-None-Match / If-Match conditional requests."""

    def __init__(self, uri: str) -> None:
        import boto3

        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        self.bucket, self.key = bucket, f"{prefix.strip('/')}/{LEASE_NAME}".lstrip("/")
        # a session of its own: the default session keeps the credentials it first found for the whole process
        self.client = boto3.session.Session().client("s3")

    def _conditional(self, **kwargs: Any) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=self.key, **kwargs)
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code", "")
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                return False
            raise OSError(f"s3://{self.bucket}/{self.key}: {err}") from err
        return True

    def read(self) -> tuple[dict[str, Any] | None, Any]:
        from botocore.exceptions import ClientError

        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None, None
            raise OSError(f"s3://{self.bucket}/{self.key}: {err}") from err
        return _parse(answer["Body"].read()), answer["ETag"]

    def create(self, record: dict[str, Any]) -> bool:
        if not self._conditional(Body=lease_json(record), IfNoneMatch="*"):
            return False
        # A store that ignores If-None-Match would have let a second driver overwrite: read back our token.
        current, _ = self.read()
        return current is not None and current.get("token") == record["token"]

    def take_over(self, version: Any, record: dict[str, Any]) -> bool:
        return self._conditional(Body=lease_json(record), IfMatch=version)

    def renew(self, version: Any, record: dict[str, Any]) -> bool:
        return self._conditional(Body=lease_json(record), IfMatch=version)

    def delete(self, version: Any) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=version)
        except ClientError as err:
            log.warning("could not release the lease s3://%s/%s (%s)", self.bucket, self.key, err)


class GenericLeaseStore:
    """Object stores raytts has no conditional writes for (gs://, ...): write, pause, read back (best effort)."""

    SETTLE_S = 1.0

    def __init__(self, uri: str) -> None:
        import pyarrow.fs as pafs

        self.fs, base = pafs.FileSystem.from_uri(uri)
        self.path = f"{base.rstrip('/')}/{LEASE_NAME}"
        log.warning(
            "%s: this store gets no conditional writes from raytts; the one-driver-per-output lease is best effort "
            "(written, then read back after %.0f s)", uri, self.SETTLE_S,
        )  # fmt: skip

    def read(self) -> tuple[dict[str, Any] | None, Any]:
        import pyarrow.fs as pafs

        if self.fs.get_file_info(self.path).type == pafs.FileType.NotFound:
            return None, None
        with self.fs.open_input_stream(self.path) as f:
            data = f.read()
        return _parse(data), data

    def _write_and_confirm(self, record: dict[str, Any]) -> bool:
        with self.fs.open_output_stream(self.path) as f:
            f.write(lease_json(record))
        time.sleep(self.SETTLE_S)
        current, _ = self.read()
        return current is not None and current.get("token") == record["token"]

    def create(self, record: dict[str, Any]) -> bool:
        return self.read()[0] is None and self._write_and_confirm(record)

    def take_over(self, version: Any, record: dict[str, Any]) -> bool:
        return self.read()[1] == version and self._write_and_confirm(record)

    def renew(self, version: Any, record: dict[str, Any]) -> bool:
        return self.read()[1] == version and self._write_and_confirm(record)

    def delete(self, version: Any) -> None:
        if self.read()[1] == version:
            self.fs.delete_file(self.path)


def store_for(output: str) -> LeaseStore:
    if "://" not in output or output.startswith("file://"):
        return LocalLeaseStore(output.removeprefix("file://"))
    if output.startswith("s3://"):
        return S3LeaseStore(output)
    return GenericLeaseStore(output)
