"""How closely one precision's output follows another's on the same weights and requests (fp16 vs fp32).

Sampling is deterministic for a given seed, so two precisions produce the same codes until a logit difference
flips one sample; after that a row's codes (and length) diverge. So agreement is reported three ways: the share of
rows whose codes are identical, the share of (frame, codebook) positions that match over each pair's longer
length, and the frame of each row's first difference. Waveforms are only comparable where the codes are
identical; for those rows the signal-to-noise ratio of the other waveform against the reference is reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .replica import SynthesisResult


@dataclass
class Agreement:
    rows: int = 0
    identical_rows: int = 0
    positions: int = 0  # (frame, codebook) positions over each pair's longer length
    matching_positions: int = 0
    first_difference: list[int | None] = field(default_factory=list)  # frame index per row, None when identical
    snr_db: list[float] = field(default_factory=list)  # per row with identical codes (inf: identical audio)

    @property
    def code_agreement(self) -> float:
        return self.matching_positions / self.positions if self.positions else 1.0

    def to_dict(self) -> dict[str, float | int | None]:
        finite = [s for s in self.snr_db if math.isfinite(s)]
        return {
            "rows": self.rows,
            "identical_rows": self.identical_rows,
            "identical_row_share": round(self.identical_rows / self.rows, 4) if self.rows else None,
            "code_agreement": round(self.code_agreement, 4),
            "first_difference_frames": self.first_difference,
            "waveform_snr_db_min": round(min(self.snr_db), 2) if self.snr_db else None,
            "waveform_snr_db_median": round(float(np.median(self.snr_db)), 2) if self.snr_db else None,
            "waveform_rows_bit_identical": len(self.snr_db) - len(finite),
        }


def snr_db(reference: np.ndarray, other: np.ndarray) -> float:
    """10 log10(signal power / error power) of `other` against `reference` (same length); inf when equal."""
    if reference.shape != other.shape:
        raise ValueError(f"waveforms must have the same length to compare, got {reference.shape} and {other.shape}")
    ref = reference.astype(np.float64)
    error = float(np.sum((ref - other.astype(np.float64)) ** 2))
    signal = float(np.sum(ref**2))
    if error == 0.0:
        return math.inf
    return 10.0 * math.log10(signal / error) if signal > 0 else -math.inf


def compare(reference: list[SynthesisResult], other: list[SynthesisResult]) -> Agreement:
    """Agreement of `other` with `reference`, row by row (same requests in the same order, both all ok)."""
    if len(reference) != len(other):
        raise ValueError(f"expected results for the same requests, got {len(reference)} and {len(other)} rows")
    out = Agreement()
    for ref, oth in zip(reference, other, strict=True):
        if ref.id != oth.id:
            raise ValueError(f"rows are not in the same order: {ref.id!r} vs {oth.id!r}")
        if ref.codes is None or oth.codes is None or ref.audio is None or oth.audio is None:
            raise ValueError(f"row {ref.id!r} failed in one run ({ref.error or oth.error}); agreement needs both ok")
        a, b = np.asarray(ref.codes), np.asarray(oth.codes)
        common = min(len(a), len(b))
        same = (a[:common] == b[:common]).all(axis=1)
        differs = np.flatnonzero(~same)
        out.rows += 1
        out.positions += max(len(a), len(b)) * a.shape[1]
        out.matching_positions += int((a[:common] == b[:common]).sum())
        if len(a) == len(b) and not len(differs):
            out.identical_rows += 1
            out.first_difference.append(None)
            out.snr_db.append(snr_db(ref.audio, oth.audio))
        else:
            out.first_difference.append(int(differs[0]) if len(differs) else common)
    return out
