"""Streamed responses of a Serve replica: audio pieces as they are generated, as raw audio bytes or as OpenAI's
server-sent events, releasing the model lease when the body ends.

A stream that passes the request's deadline is cancelled in the engine and ends as an error the client sees, never
as a clean end of audio: a raw audio body is aborted (the connection closes before the chunked body's end, which
HTTP clients report as an incomplete read), and an SSE body ends with an `error` event instead of
`speech.audio.done`."""

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


class StreamDeadline(RuntimeError):
    """A streamed request ran past `limits.request_timeout_s`."""


async def _pieces(stream: SpeechStream, deadline: float, timeout_s: float) -> AsyncIterator[np.ndarray]:
    """The stream's audio pieces until it ends; raises StreamDeadline (after cancelling it) when the deadline passes."""
    chunks = aiter(stream)
    try:
        while True:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise asyncio.TimeoutError
                yield await asyncio.wait_for(anext(chunks), remaining)
            except StopAsyncIteration:
                return
            except asyncio.TimeoutError:
                log.warning("stream passed its %.0f s deadline; cancelled", timeout_s)
                raise StreamDeadline(
                    f"the stream did not finish within the server's request timeout ({timeout_s:.0f} s); the audio "
                    f"sent is incomplete: retry with shorter input, or when the server is less busy"
                ) from None
    finally:
        stream.close()


def stream_response(
    stream: SpeechStream, encoder: AudioEncoder, sse: bool, headers: dict[str, str], lease: Lease, timeout_s: float
) -> Response:
    deadline = time.monotonic() + timeout_s
    lease.streaming = True  # released when the body ends (or, if the client never reads it, at eviction timeout)

    async def audio_bytes() -> AsyncIterator[bytes]:
        try:
            async for piece in _pieces(stream, deadline, timeout_s):
                data = encoder.push(piece)
                if data:
                    yield data
            tail = encoder.finish()
            if tail:
                yield tail
        finally:
            lease.release()

    async def events() -> AsyncIterator[bytes]:
        try:
            async for data in audio_bytes():
                delta = {"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()}
                yield f"data: {json.dumps(delta)}\n\n".encode()
        except StreamDeadline as err:
            error = {"type": "error", "error": {"type": "timeout", "code": "request_timeout", "message": str(err)}}
            yield f"data: {json.dumps(error)}\n\n".encode()
            return
        frames = int(stream.result.codes.shape[0]) if stream.result and stream.result.codes is not None else 0
        done = {"type": "speech.audio.done", "usage": {"input_tokens": 0, "output_tokens": frames}}
        yield f"data: {json.dumps(done)}\n\n".encode()

    if sse:
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)
    return StreamingResponse(audio_bytes(), media_type=encoder.media_type, headers=headers)
