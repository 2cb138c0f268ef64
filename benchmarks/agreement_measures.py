"""How closely one precision's output follows another's on the same weights and requests (fp16 vs fp32), for
`benchmarks/agreement.py` and its CPU test (benchmark code: not part of the runtime packages).

Sampling is deterministic for a given seed, so two precisions produce the same codes until a logit difference
flips one sample; after that a row's codes (and length) diverge. So agreement is reported three ways: the share of
rows whose codes are identical, the share of (frame, codebook) positions that match over each pair's longer
length, and the frame of each row's first difference. Waveforms are only comparable where the codes are
identical; for those rows the signal-to-noise ratio of the other waveform against the reference is reported.

Free-running agreement mixes how often logits differ with where the first flip happens. `teacher_forced` measures
the logits themselves: both models read the reference's own codes as their history (one forward pass each) and
the share of (frame, codebook) positions whose top-1 code is the same is reported, with the mean absolute logit
difference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    from actors.replica import Synthesizer
    from actors.requests import SynthesisRequest, SynthesisResult


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


def forced_logits(
    synth: Synthesizer, requests: list[SynthesisRequest], results: list[SynthesisResult]
) -> list[torch.Tensor | None]:
    """Code logits [T, num_vq, codes] (float32, on the host) of `synth`'s model along the codes in `results`
    (usually another replica's: the reference's), one forward pass per row. None for a row without codes or split
    into several segments (its codes are concatenated in the result)."""
    import torch

    from actors.engine.prompt import prompt_embeddings
    from actors.model.gpt import PagedKVCache

    _, segments = synth.prepare(requests)
    by_row: dict[int, list] = {}
    for segment in segments:
        by_row.setdefault(segment.request, []).append(segment)
    model = synth.model
    out: list[torch.Tensor | None] = []
    for row, result in enumerate(results):
        if result.codes is None or len(result.codes) == 0 or len(by_row.get(row, [])) != 1:
            out.append(None)
            continue
        prompt = by_row[row][0].prompt
        with torch.inference_mode():
            codes = torch.from_numpy(np.asarray(result.codes, dtype=np.int64)).to(model.device)
            embeds = prompt_embeddings(model, prompt, synth.tokenizer.spk_emb_id)
            embeds = torch.cat([embeds, model.embed.embed_codes(codes).to(embeds.dtype)]).unsqueeze(0)
            total = embeds.shape[1]
            blocks = -(-total // 16)
            cache = PagedKVCache(model.config.gpt, blocks + 1, 16, model.device, embeds.dtype)
            cache.zero_blocks(1, blocks + 1)
            table = torch.arange(1, blocks + 1, device=model.device).unsqueeze(0)
            positions = torch.arange(total, device=model.device).unsqueeze(0)
            hidden = model.gpt(embeds, positions, cache, table, [(None, total)])[0]
            # the hidden state that produced frame j sits at position prompt.length - 1 + j
            steps = hidden[prompt.length - 1 : prompt.length - 1 + len(codes)]
            out.append(model.embed.code_logits(steps).float().cpu())
    return out


def teacher_forced(
    reference: list[torch.Tensor | None], other: list[torch.Tensor | None], results: list[SynthesisResult], eos: int
) -> dict[str, float | int | None]:
    """Top-1 agreement and mean |logit difference| of `other`'s forced logits against `reference`'s, both along the
    codes in `results` (see `forced_logits`); `eos` is the model's end code."""
    import torch

    positions = matching = own = skipped = 0
    abs_diff = 0.0
    for ref, oth, result in zip(reference, other, results, strict=True):
        if ref is None or oth is None:
            skipped += 1
            continue
        positions += ref.shape[0] * ref.shape[1]
        matching += int((ref.argmax(-1) == oth.argmax(-1)).sum())
        abs_diff += float((ref - oth).abs().mean(-1).sum())
        # generated frames never hold the end code, which min_new_tokens may have masked: compare without it
        ref_no_eos = ref.clone()
        ref_no_eos[..., eos] = -torch.inf
        own += int((ref_no_eos.argmax(-1) == torch.from_numpy(np.asarray(result.codes, dtype=np.int64))).sum())
    return {
        "teacher_forced_rows": len(results) - skipped,
        "teacher_forced_skipped_rows": skipped,
        "teacher_forced_top1_agreement": round(matching / positions, 4) if positions else None,
        "teacher_forced_mean_abs_logit_diff": round(abs_diff / positions, 5) if positions else None,
        # the reference's own top-1 (end code excluded) vs the codes it generated: 1.0 under deterministic sampling
        # without a repetition penalty (a check that the positions line up); lower with sampling, as expected
        "teacher_forced_reference_top1_is_code": round(own / positions, 4) if positions else None,
    }
