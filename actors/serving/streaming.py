"""Streamed responses of a Serve replica: audio pieces as they are generated, as raw audio bytes or as OpenAI's
server-sent events, cut off at the request's deadline and releasing the model lease when the body ends."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator

import numpy as np
from fastapi.responses import Response, StreamingResponse

from actors.async_engine import SpeechStream

from .api import AudioEncoder
from .models import Lease

log = logging.getLogger("actors.serving.app")


async def _pieces(stream: SpeechStream, deadline: float) -> AsyncIterator[np.ndarray]:
    """The stream's audio pieces until it ends or the deadline passes (then it is cancelled)."""
    chunks = aiter(stream)
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning("stream passed its deadline; cancelled")
                return
            try:
                yield await asyncio.wait_for(anext(chunks), remaining)
            except StopAsyncIteration:
                return
            except asyncio.TimeoutError:
                log.warning("stream passed its deadline; cancelled")
                return
    finally:
        stream.close()


def stream_response(
    stream: SpeechStream, encoder: AudioEncoder, sse: bool, headers: dict[str, str], lease: Lease, timeout_s: float
) -> Response:
    deadline = time.monotonic() + timeout_s
    lease.streaming = True  # released when the body ends (or, if the client never reads it, at eviction timeout)

    async def audio_bytes() -> AsyncIterator[bytes]:
        try:
            async for piece in _pieces(stream, deadline):
                data = encoder.push(piece)
                if data:
                    yield data
            tail = encoder.finish()
            if tail:
                yield tail
        finally:
            lease.release()

    async def events() -> AsyncIterator[bytes]:
        async for data in audio_bytes():
            delta = {"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()}
            yield f"data: {json.dumps(delta)}\n\n".encode()
        frames = int(stream.result.codes.shape[0]) if stream.result and stream.result.codes is not None else 0
        done = {"type": "speech.audio.done", "usage": {"input_tokens": 0, "output_tokens": frames}}
        yield f"data: {json.dumps(done)}\n\n".encode()

    if sse:
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)
    return StreamingResponse(audio_bytes(), media_type=encoder.media_type, headers=headers)
