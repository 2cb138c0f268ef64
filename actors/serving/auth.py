"""Who may call a Serve replica and how much they may send: bearer-token checks (loopback only without keys) and a
request body read with a size limit."""

from __future__ import annotations

import hmac

from fastapi import Request

from .api import ApiError
from .config import LOOPBACK_HOSTS, AuthSpec


def authorize(request: Request, keys: list[str], auth: AuthSpec) -> None:
    if not keys:
        client = request.client.host if request.client else None
        if client not in LOOPBACK_HOSTS:
            raise ApiError(
                401,
                f"this server has no API keys, so it only answers loopback clients (you are {client}); set "
                f"{auth.api_keys_env} or auth.api_keys and send 'Authorization: Bearer KEY'",
                kind="authentication_error",
            )
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "missing 'Authorization: Bearer KEY' header", kind="authentication_error")
    if not any(hmac.compare_digest(token.strip().encode(), key.encode()) for key in keys):
        raise ApiError(401, "invalid API key", kind="authentication_error")


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, f"Content-Length must be a byte count, got {declared[:40]!r}")
        if int(declared) > limit:
            raise ApiError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"request body exceeds the limit of {limit} bytes")
    return bytes(body)
