"""Per-row quality measures and the flags a policy raises from them: ChatTTS fails per row in ways only a listener
would otherwise find (a segment that runs to max_new_tokens and babbles, long silences, a clipped or near-silent
row, speech far too fast or slow for its text, the same few codes looping). Every measure is computed where the
row's audio already is (the replica's host arrays, after the one device-to-host copy): numpy over the waveform and
the codes, no second decode, no extra copy.

Measures (`QualityMeasures`):
- `duration_s`; `seconds_per_unit`: audio seconds per spoken unit of `spoken_text` (a Chinese character or an
  English word; control tags not counted), the speaking rate's inverse;
- `lead_silence_s`, `trail_silence_s`, `longest_pause_s`: runs of 20 ms frames below `SILENCE_DBFS`;
- `rms_dbfs` over the frames that are not silent (the loudness of the speech), `peak`, `clipped_share` (samples
  at or beyond `CLIP_LEVEL` of full scale);
- `loop_s`, `loop_share`: the longest stretch of GPT frames that repeats a period of 1 to `MAX_LOOP_PERIOD` frames
  exactly (all four codebooks), in seconds and as a share of the row;
- `truncated_segments`: segments that ran to max_new_tokens without the end token.

Thresholds (`QualityPolicy`): defaults from what speech is, with wide margins, not yet from real ChatTTS output (no
weights can be fetched here): read speech runs ~2-3.5 English words or ~3-6 Chinese characters a second, so below
0.12 or above 1.0 s per unit is far outside; a pause over 2 s inside a sentence, 1 s before the first word or 1.5 s
after the last is no prosody; speech quieter than -45 dBFS is near silence (ChatTTS speaks around -20 dBFS);
0.1% of samples at full scale is audible clipping; a loop of 2 s or more that repeats its period 3 times or more is
babble. `benchmarks/quality.py` measures each detector's hit rate on constructed faults and false alarms on clean
rows; re-derive the thresholds from real output with it when real weights run.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from .model.config import SAMPLE_RATE, STEPS_PER_SECOND

SILENCE_DBFS = -50.0  # a 20 ms frame quieter than this is silence
FRAME_S = 0.02
CLIP_LEVEL = 0.999  # of full scale: the PCM16 encoding saturates here
MAX_LOOP_PERIOD = 48  # GPT frames (~1 s): longer repeats are phrasing, not a loop
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
_TAG = re.compile(r"\[\w+\]")

FLAGS = (
    "truncated", "too_fast", "too_slow", "lead_silence", "trail_silence", "long_pause", "too_quiet", "clipped", "loop",
    "asr_mismatch",  # raised by the ASR round trip (`actors.asr`), not by the signal measures below
)  # fmt: skip
# What each flag means to a listener (the listening page's legend; docs/quality.md has the thresholds).
FLAG_MEANINGS = {
    "truncated": "a segment ran to max_new_tokens without its end token: usually babble at the end",
    "too_fast": "far more text than audio: words skipped or swallowed",
    "too_slow": "far more audio than text: words invented, babble or long noise",
    "lead_silence": "a long silence before the first sound",
    "trail_silence": "a long silence after the last sound",
    "long_pause": "a long silence inside the row",
    "too_quiet": "speech near silence",
    "clipped": "samples at full scale: audible distortion",
    "loop": "the same few codes repeating: a stutter or drone",
    "asr_mismatch": "a recogniser heard other words than the text: skipped, wrong or invented words",
}


@dataclass
class QualityMeasures:
    duration_s: float
    seconds_per_unit: float | None  # None: the spoken text has no unit to count (tags only)
    lead_silence_s: float
    trail_silence_s: float
    longest_pause_s: float
    rms_dbfs: float
    peak: float
    clipped_share: float
    loop_s: float
    loop_share: float
    truncated_segments: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def arrow_type() -> Any:
    """The `qc` column's Arrow type: a struct of every measure (one definition for the job's parts and its stage)."""
    import pyarrow as pa

    kinds = {"truncated_segments": pa.int32()}
    return pa.struct([(f.name, kinds.get(f.name, pa.float64())) for f in fields(QualityMeasures)])


@dataclass(frozen=True)
class QualityPolicy:
    """Which measures raise which flag (`FLAGS`), and what a flagged row becomes: `keep` (written, flagged), `retake`
    (synthesised again with the next seed, seed + 1, + 2, ..., up to `max_attempts` takes in all; the best take by
    `score` is kept, flagged if no take was clean) or `error` (an error row of kind `quality`, naming its flags)."""

    on_fail: str = "keep"
    max_attempts: int = 3
    min_seconds_per_unit: float = 0.12
    max_seconds_per_unit: float = 1.0
    max_lead_silence_s: float = 1.0
    max_trail_silence_s: float = 1.5
    max_pause_s: float = 2.0
    min_rms_dbfs: float = -45.0
    max_clipped_share: float = 0.001
    max_loop_s: float = 2.0
    allow_truncated: bool = False

    def flags(self, m: QualityMeasures) -> list[str]:
        rate = m.seconds_per_unit
        raised = {
            "truncated": m.truncated_segments > 0 and not self.allow_truncated,
            "too_fast": rate is not None and rate < self.min_seconds_per_unit,
            "too_slow": rate is not None and rate > self.max_seconds_per_unit,
            "lead_silence": m.lead_silence_s > self.max_lead_silence_s,
            "trail_silence": m.trail_silence_s > self.max_trail_silence_s,
            "long_pause": m.longest_pause_s > self.max_pause_s,
            "too_quiet": m.rms_dbfs < self.min_rms_dbfs,
            "clipped": m.clipped_share > self.max_clipped_share,
            "loop": m.loop_s >= self.max_loop_s,
        }
        return [name for name in FLAGS if raised.get(name)]

    def score(self, measures: QualityMeasures | None, flags: list[str] | None) -> tuple[float, ...]:
        """A take's badness, compared in order: flags raised, truncated segments, seconds of code loop, the longest
        pause beyond the allowed one; a take without measures (it failed) is worst."""
        if measures is None:
            return (math.inf,)
        excess_pause = max(0.0, measures.longest_pause_s - self.max_pause_s)
        return (len(flags or ()), measures.truncated_segments, measures.loop_s, excess_pause)


POLICY_FIELDS = tuple(f.name for f in fields(QualityPolicy))


def spoken_units(text: str) -> int:
    """Chinese characters plus English words of `text`, control tags not counted."""
    plain = _TAG.sub(" ", text or "")
    return len(_CJK.findall(plain)) + len(_WORD.findall(plain))


def measure(audio: np.ndarray, codes: np.ndarray | None, spoken_text: str, truncated_segments: int) -> QualityMeasures:
    """The row's measures from its waveform (float32, [-1, 1], SAMPLE_RATE) and its [T, num_vq] codes."""
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    duration = audio.size / SAMPLE_RATE
    units = spoken_units(spoken_text)
    lead, trail, pause, rms = _silences(audio)
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    clipped = float(np.count_nonzero(np.abs(audio) >= CLIP_LEVEL)) / max(1, audio.size)
    loop_frames = _longest_loop(codes) if codes is not None else 0
    frames = 0 if codes is None else int(codes.shape[0])
    return QualityMeasures(
        duration_s=round(duration, 4),
        seconds_per_unit=round(duration / units, 4) if units else None,
        lead_silence_s=round(lead, 3),
        trail_silence_s=round(trail, 3),
        longest_pause_s=round(pause, 3),
        rms_dbfs=round(rms, 2),
        peak=round(peak, 4),
        clipped_share=round(clipped, 6),
        loop_s=round(loop_frames / STEPS_PER_SECOND, 3),
        loop_share=round(loop_frames / frames, 4) if frames else 0.0,
        truncated_segments=int(truncated_segments),
    )


def _silences(audio: np.ndarray) -> tuple[float, float, float, float]:
    """(leading, trailing, longest inner silence in seconds, RMS dBFS of the frames that are not silent)."""
    size = int(SAMPLE_RATE * FRAME_S)
    count = audio.size // size
    if count == 0:
        return 0.0, 0.0, 0.0, _dbfs(float(np.sqrt(np.mean(audio**2))) if audio.size else 0.0)
    frames = audio[: count * size].reshape(count, size).astype(np.float64)
    power = np.mean(frames**2, axis=1)
    loud = power > 10 ** (SILENCE_DBFS / 10)
    if not loud.any():
        return count * FRAME_S, 0.0, 0.0, _dbfs(float(np.sqrt(power.mean())))
    first, last = int(np.argmax(loud)), count - 1 - int(np.argmax(loud[::-1]))
    inner = ~loud[first : last + 1]
    longest = _longest_run(inner)
    rms = float(np.sqrt(power[loud].mean()))
    return first * FRAME_S, (count - 1 - last) * FRAME_S, longest * FRAME_S, _dbfs(rms)


def _dbfs(rms: float) -> float:
    return 20 * math.log10(rms) if rms > 1e-10 else -200.0


def _longest_run(mask: np.ndarray) -> int:
    """Length of the longest run of True in a 1-D boolean array."""
    if not mask.any():
        return 0
    padded = np.concatenate(([0], mask.astype(np.int8), [0]))
    edges = np.flatnonzero(np.diff(padded))
    return int(np.max(edges[1::2] - edges[::2]))


def _longest_loop(codes: np.ndarray) -> int:
    """Frames in the longest stretch where every frame equals the one `p` frames earlier (1 <= p <= 48, all
    codebooks), counting the first period: a stretch must repeat its period at least 3 times to count."""
    codes = np.asarray(codes)
    frames = codes.shape[0]
    best = 0
    for period in range(1, min(MAX_LOOP_PERIOD, frames // 3) + 1):
        same = (
            np.all(codes[period:] == codes[:-period], axis=-1) if codes.ndim > 1 else codes[period:] == codes[:-period]
        )
        run = _longest_run(same)
        if run >= 2 * period:  # the period, then at least two more copies of it
            best = max(best, run + period)
    return best


# Histogram edges of the report's distributions (fixed, so parts add up without holding every row).
HISTOGRAMS: dict[str, tuple[float, ...]] = {
    "duration_s": (0, 1, 2, 3, 5, 8, 12, 20, 30, 60, math.inf),
    "seconds_per_unit": (0, 0.08, 0.12, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0, 1.5, math.inf),
    "longest_pause_s": (0, 0.25, 0.5, 1, 1.5, 2, 3, 5, math.inf),
    "lead_silence_s": (0, 0.1, 0.25, 0.5, 1, 2, math.inf),
    "trail_silence_s": (0, 0.1, 0.25, 0.5, 1, 1.5, 3, math.inf),
    "rms_dbfs": (-math.inf, -60, -45, -35, -30, -25, -20, -15, -10, math.inf),
    "loop_s": (0, 0.25, 0.5, 1, 2, 4, math.inf),
    "asr_error_rate": (0, 0.05, 0.1, 0.2, 0.35, 0.5, 1, math.inf),  # rows the ASR round trip scored
}


class QualitySummary:
    """Flag counts and fixed-bin histograms of the measures over a job's rows, added part by part."""

    def __init__(self) -> None:
        self.measured = 0
        self.flagged = 0
        self.retaken = 0  # rows taken more than once (on_fail: retake)
        self.extra_takes = 0
        self.flags: dict[str, int] = dict.fromkeys(FLAGS, 0)
        self.counts = {name: [0] * (len(edges) - 1) for name, edges in HISTOGRAMS.items()}

    def add(
        self,
        measures: dict[str, Any] | None,
        flags: list[str] | None,
        attempts: int | None = 1,
        asr_error_rate: float | None = None,
    ) -> None:
        self.retaken += bool(attempts and attempts > 1)
        self.extra_takes += max(0, (attempts or 1) - 1)
        if measures is None:
            return
        measures = {**measures, "asr_error_rate": asr_error_rate}
        self.measured += 1
        self.flagged += bool(flags)
        for flag in flags or ():
            self.flags[flag] = self.flags.get(flag, 0) + 1
        for name, edges in HISTOGRAMS.items():
            value = measures.get(name)
            if value is not None:
                index = int(np.searchsorted(edges, value, side="right")) - 1
                self.counts[name][min(max(index, 0), len(edges) - 2)] += 1

    def add_columns(self, measures: Any, flags: Any, attempts: Any, asr_error_rate: Any = None) -> None:
        """`add` for every row of Arrow columns at once (a part of a job's output: `qc`, `qc_flags`, `qc_attempts`,
        `asr_error_rate`), in Arrow and numpy kernels: the same counts, without a Python object per row."""
        import pyarrow as pa
        import pyarrow.compute as pc

        takes = pc.fill_null(attempts, 1).to_numpy(zero_copy_only=False) if len(attempts) else np.zeros(0)
        self.retaken += int(np.count_nonzero(takes > 1))
        self.extra_takes += int(np.maximum(takes - 1, 0).sum())
        measured = pc.is_valid(measures)
        measures, flags = measures.filter(measured), flags.filter(measured)
        self.measured += len(measures)
        if not len(measures):
            return
        lengths = pc.fill_null(pc.list_value_length(flags), 0)
        self.flagged += int(pc.sum(pc.greater(lengths, 0)).as_py() or 0)
        for entry in pc.value_counts(pc.list_flatten(flags)).to_pylist():
            self.flags[entry["values"]] = self.flags.get(entry["values"], 0) + entry["counts"]
        rates = asr_error_rate.filter(measured) if asr_error_rate is not None else pa.nulls(len(measures), pa.float64())
        for name, edges in HISTOGRAMS.items():
            column = rates if name == "asr_error_rate" else pc.struct_field(measures, name)
            values = pc.drop_null(column).to_numpy(zero_copy_only=False).astype(np.float64)
            index = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)
            for bin_index, count in enumerate(np.bincount(index, minlength=len(edges) - 1)):
                self.counts[name][bin_index] += int(count)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows_measured": self.measured,
            "rows_flagged": self.flagged,
            "rows_retaken": self.retaken,
            "extra_takes": self.extra_takes,
            "flags": self.flags,
            "histograms": {
                name: {"edges": [_edge(e) for e in HISTOGRAMS[name]], "counts": counts}
                for name, counts in self.counts.items()
            },
        }


def _edge(value: float) -> float | str:
    return value if math.isfinite(value) else ("inf" if value > 0 else "-inf")
