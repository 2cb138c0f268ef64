"""The text front end (normalise, split, tokenise: `actors.text.text_front_end`) of requests that arrive as text
(Serve), run off the engine's thread so a long text never stalls the decode steps of every other stream.

Short texts (up to `inline_chars`, a few milliseconds) are done at once by the caller; longer ones go to a pool of
worker processes (`workers`): the normalisation grammars (kaldifst) hold the GIL, so in a thread they would still
stop the engine thread's Python for as long as they run. The offline job does the same work in its own CPU stage
(`pipeline.prepare`); `raytts synth` leaves it to the engine.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .requests import SynthesisRequest
from .text import FrontEnd, text_front_end
from .tokenizer import TextTokenizer

log = logging.getLogger(__name__)

INLINE_CHARS = 256  # texts up to this long are prepared by the caller (~1-3 ms)

_WORKER_TOKENIZER: TextTokenizer | None = None  # per worker process


def _start_worker(tokenizer_json: str, num_text_tokens: int) -> None:
    global _WORKER_TOKENIZER
    from . import normalize

    _WORKER_TOKENIZER = TextTokenizer(None, num_text_tokens, json_text=tokenizer_json)
    normalize.load()  # the grammars once, before the first request


def _ready() -> bool:
    return _WORKER_TOKENIZER is not None


def _run_in_worker(args: dict) -> FrontEnd:
    assert _WORKER_TOKENIZER is not None, "front-end worker started without its tokenizer"
    return text_front_end(tokenizer=_WORKER_TOKENIZER, **args)


@dataclass(frozen=True)
class FrontEndLimits:
    max_segment_tokens: int
    max_chars: int


class FrontEndPool:
    """Prepares requests' front ends (`prepare`), short ones inline, long ones in `workers` processes."""

    def __init__(
        self,
        tokenizer: TextTokenizer,
        tokenizer_file: Path,
        limits: FrontEndLimits,
        workers: int = 1,
        inline_chars: int = INLINE_CHARS,
    ) -> None:
        self.tokenizer, self.limits, self.inline_chars = tokenizer, limits, inline_chars
        context = multiprocessing.get_context("spawn")  # never fork a process that runs an engine thread
        self._pool = ProcessPoolExecutor(
            max_workers=max(1, workers),
            mp_context=context,
            initializer=_start_worker,
            initargs=(tokenizer_file.read_text(), tokenizer.vocab_size),
        )
        self._pool.submit(_ready)  # start the workers (and load their grammars) now, not on the first long text

    def _args(self, request: SynthesisRequest) -> dict:
        return {
            "text": request.text,
            "prompt": request.prompt,
            "has_speaker": bool(request.speaker and str(request.speaker).strip()),
            "reference_text": request.reference_text,
            "normalize": request.normalize,
            "max_segment_tokens": self.limits.max_segment_tokens,
            "max_chars": self.limits.max_chars,
            "strict": request.strict,
            "reading": request.reading,
        }

    async def prepare(self, request: SynthesisRequest) -> None:
        """Set `request.front_end`; raises RequestError for text that cannot be synthesised (as the engine would)."""
        if request.front_end is not None:
            return
        args = self._args(request)
        if not isinstance(request.text, str) or len(request.text) <= self.inline_chars:
            request.front_end = text_front_end(tokenizer=self.tokenizer, **args)
            return
        loop = asyncio.get_running_loop()
        request.front_end = await loop.run_in_executor(self._pool, _run_in_worker, args)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
