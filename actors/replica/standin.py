"""A stand-in engine for benchmarks of the CPU stages: the real replica's interface and host work, no model.

`StandInSynthesizer` is a `Synthesizer` on the built-in tiny checkpoint (its tokenizer, request validation, voices
and segments are the real ones) whose generation is replaced by a clock: segments finish one after another at
`rows_per_s` (a serial server at the rate a GPU replica would sustain), each with audio of a realistic length (0.3 s
per text token of its prompt, the pace of ChatTTS speech) cut from a speech-like signal, and random codes. Joining,
the quality measures, and everything the job does after the engine are the real code, so a job run with it measures
the CPU stages around an engine that runs at GPU speed on a machine without one (`benchmarks/cpu_stages.py`).

It is switched on only by the environment variable `RAYTTS_STANDIN_ROWS_PER_S` in the engine actors (a benchmark
sets it before starting its local Ray), only with the tiny model, and every row it makes names it in its `model`
column: its audio is not speech and must never be taken for a model's output.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from ..driver import Segment, SegmentAudio
from ..engine.prompt import CodePrompt
from ..model.config import SAMPLE_RATE, SAMPLES_PER_FRAME, STEPS_PER_SECOND
from .synthesizer import Synthesizer

ENV = "RAYTTS_STANDIN_ROWS_PER_S"
SECONDS_PER_TOKEN = 0.3  # audio per text token: ~0.3-0.4 s per English word or Chinese character, as ChatTTS speaks
PROMPT_TOKENS = 5  # [Stts], [spk_emb] or [empty_spk], a control tag, [Ptts]... of every prompt: not spoken
SIGNAL_SECONDS = 30.0


def rows_per_s_from_env() -> float | None:
    """The stand-in's rate when the benchmark asked for it (`RAYTTS_STANDIN_ROWS_PER_S`), else None."""
    value = os.environ.get(ENV)
    if not value:
        return None
    try:
        rate = float(value)
    except ValueError:
        raise ValueError(f"{ENV} must be a number of rows per second (e.g. 400), got {value!r}") from None
    if not rate > 0:
        raise ValueError(f"{ENV} must be > 0 rows per second, got {value!r}")
    return rate


@dataclass
class _Pending:
    key: object
    due: float  # time.monotonic() at which the segment is finished
    frames: int


class StandInSynthesizer(Synthesizer):
    """See the module docstring. `rows_per_s`: segments finished per second by this replica (math.inf: at once)."""

    def __init__(self, model: str, rows_per_s: float, **settings: object) -> None:
        if model != "tiny":
            raise ValueError(
                f"the stand-in engine ({ENV}) runs only with model 'tiny', got {model!r}: it writes no real audio, so "
                f"it must never run a job over a real model's output; unset {ENV} to synthesise"
            )
        super().__init__(model, **settings)  # type: ignore[arg-type]
        self.rows_per_s = rows_per_s
        source = f"standin-engine({rows_per_s:g} rows/s) over {self.checkpoint.source}"
        self.checkpoint = replace(self.checkpoint, source=source)  # the rows' `model` column names the stand-in
        self._pending: list[_Pending] = []
        self._last_due = 0.0
        self._signal = speechlike(SIGNAL_SECONDS)
        frames = int(SIGNAL_SECONDS * STEPS_PER_SECOND)
        self._codes = np.random.default_rng(0).integers(0, 626, size=(frames, 4), dtype=np.int64)

    def submit(self, segment: Segment, key: object, stream: bool = False) -> None:
        """Queue the segment (a refine-text segment is spoken as it is: the stand-in has no text model)."""
        prompt: CodePrompt = segment.prompt
        spoken = max(1, len(prompt.token_ids) - PROMPT_TOKENS)
        frames = max(1, round(spoken * SECONDS_PER_TOKEN * STEPS_PER_SECOND))
        now = time.monotonic()
        self._last_due = max(now, self._last_due) + (0.0 if math.isinf(self.rows_per_s) else 1 / self.rows_per_s)
        self._pending.append(_Pending(key, self._last_due, frames))

    def pump(self) -> list[SegmentAudio]:
        """The segments whose time has come; waits (at most 5 ms) when none has."""
        now = time.monotonic()
        if self._pending and self._pending[0].due > now:
            time.sleep(min(self._pending[0].due - now, 0.005))
            now = time.monotonic()
        done = [p for p in self._pending if p.due <= now]
        self._pending = [p for p in self._pending if p.due > now]
        out = []
        for pending in done:
            # copies, as the real engine's device-to-host copies are (longer than the signal: repeated)
            audio = _cut(self._signal, pending.frames * SAMPLES_PER_FRAME)
            codes = _cut(self._codes, pending.frames)
            out.append(SegmentAudio(pending.key, audio, codes, done=True, eos=True))
            self.stats.segments += 1
            self.stats.frames += pending.frames
        return out

    def cancel(self, keys: Callable[[object], bool]) -> int:
        before = len(self._pending)
        self._pending = [p for p in self._pending if not keys(p.key)]
        return before - len(self._pending)

    @property
    def busy(self) -> bool:
        return bool(self._pending)


def _cut(source: np.ndarray, length: int) -> np.ndarray:
    if length <= len(source):
        return source[:length].copy()
    return np.concatenate([source] * (length // len(source)) + [source[: length % len(source)]])


def speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    """A float32 signal the quality checks take for speech: voiced harmonics around 140 Hz with a wandering pitch,
    in syllables of ~0.2 s, short dips between words and no silence longer than ~0.15 s."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    pitch = 140 + 25 * np.sin(2 * np.pi * 0.7 * t) + 10 * np.sin(2 * np.pi * 2.3 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    syllables = 0.55 + 0.45 * np.sin(2 * np.pi * 4.5 * t) ** 2
    words = np.where((t % 0.9) < 0.12, 0.15, 1.0)
    noise = 0.03 * rng.standard_normal(t.size)
    signal = (voiced * syllables * words + noise) * 0.18
    return signal.astype(np.float32)
