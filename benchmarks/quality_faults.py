"""Constructed rows with known faults for the quality checks (`actors.quality`): speech-like audio (harmonic
syllables under a 4 Hz envelope at about -20 dBFS, like ChatTTS' level) and codes that vary like a model's, then
one fault at a time: inserted silence (leading, trailing, inside), clipping, near silence, speech stretched too slow
or squeezed too fast for its text, a looping code pattern, a truncated segment. Used by `benchmarks/quality.py`
(hit rates and false alarms) and `tests/unit/test_quality.py`."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from actors.model.config import SAMPLE_RATE, STEPS_PER_SECOND

SECONDS_PER_WORD = 0.38  # ~2.6 words a second: ordinary read English
WORDS = "the quick brown fox jumps over a lazy dog while seven bright stars shine above quiet hills".split()


def speech(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Syllable-like sound: harmonics of a gliding pitch under a 4 Hz envelope, with short gaps between words."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    pitch = 120 + 40 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
    voice = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = np.clip(np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6)), 0, None) ** 0.5
    noise = rng.normal(0, 0.02, t.size)
    audio = 0.16 * envelope * voice + noise * envelope
    return audio.astype(np.float32)


def codes_for(seconds: float, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 626, size=(max(1, int(seconds * STEPS_PER_SECOND)), 4)).astype(np.int16)


def clean(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str, int]:
    """(audio, codes, spoken text, truncated segments) of an ordinary row: 4-30 words at an ordinary pace."""
    words = int(rng.integers(4, 31))
    text = " ".join(rng.choice(WORDS, size=words)) + "."
    seconds = words * SECONDS_PER_WORD * rng.uniform(0.8, 1.25)
    audio = np.concatenate([np.zeros(int(0.15 * SAMPLE_RATE), np.float32), speech(seconds, rng),
                            np.zeros(int(0.3 * SAMPLE_RATE), np.float32)])  # fmt: skip
    return audio, codes_for(seconds, rng), text, 0


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), np.float32)


def _inner_silence(row, rng):
    audio, codes, text, truncated = row
    cut = audio.size // 2
    return np.concatenate([audio[:cut], _silence(rng.uniform(2.5, 6)), audio[cut:]]), codes, text, truncated


def _stretch(factor: float):
    def fault(row, rng):
        audio, codes, text, truncated = row
        seconds = audio.size / SAMPLE_RATE * factor
        return speech(seconds, rng), codes_for(seconds, rng), text, truncated

    return fault


def _loop(row, rng):
    audio, codes, text, truncated = row
    period = int(rng.integers(1, 30))
    pattern = rng.integers(0, 626, size=(period, 4)).astype(np.int16)
    repeats = int(np.ceil(rng.uniform(2.5, 6) * STEPS_PER_SECOND / period))
    return audio, np.concatenate([codes, np.tile(pattern, (repeats, 1))]), text, truncated


FAULTS: dict[str, tuple[str, Callable]] = {  # fault -> (the flag that should catch it, how to make it)
    "leading silence": ("lead_silence", lambda r, g: (np.concatenate([_silence(g.uniform(1.5, 5)), r[0]]), *r[1:])),
    "trailing silence": ("trail_silence", lambda r, g: (np.concatenate([r[0], _silence(g.uniform(2, 6))]), *r[1:])),
    "inner silence": ("long_pause", _inner_silence),
    "clipping": ("clipped", lambda r, g: (np.clip(r[0] * g.uniform(8, 20), -1, 1), *r[1:])),
    "near silence": ("too_quiet", lambda r, g: (r[0] * g.uniform(0.0005, 0.003), *r[1:])),
    "too slow (stretched 3-5x)": ("too_slow", lambda r, g: _stretch(g.uniform(3, 5))(r, g)),
    "too fast (squeezed to 1/4)": ("too_fast", lambda r, g: _stretch(g.uniform(0.15, 0.28))(r, g)),
    "looped codes": ("loop", _loop),
    "truncated segment": ("truncated", lambda r, g: (*r[:3], 1)),
}
