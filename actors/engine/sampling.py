"""The ChatTTS code-stage sampling chain, vectorised over rows that each carry their own parameters and seed.

Per step and row (upstream's order): logits / temperature (per codebook) -> repetition penalty over the row's
last 16 generated codes (alpha = penalty ** count; multiply negative logits, divide positive ones) -> top-p
(keep >= 3) -> top-k (keep >= 3) -> EOS masked before min_new_tokens -> softmax -> a categorical draw.

The draw is an exponential race driven by a counter-based hash of (row seed, step, codebook, code): the same row
gets the same codes whatever else shares its batch, on any device, with no generator state and no host sync.
At temperature -> 0 every probability but the argmax underflows to zero, so the draw is the argmax, exactly as
upstream's multinomial.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from .params import SamplingParams

__all__ = ["SamplingParams", "SamplingBatch", "process_logits", "sample"]

PENALTY_WINDOW = 16
MIN_TOKENS_TO_KEEP = 3
_MASK32 = 0xFFFFFFFF
# Devices whose draw races only the candidates (`sample`): reading the kept counts is a host sync, free on the CPU.
CANDIDATE_RACE_DEVICES = frozenset({"cpu"})


@dataclass
class SamplingBatch:
    """Per-row parameters as device tensors."""

    temperature: torch.Tensor  # [B, V] float32
    top_p: torch.Tensor  # [B] float32
    top_k: torch.Tensor  # [B] int64 (already clamped to [3, C])
    penalty: torch.Tensor  # [B] float32
    min_new_tokens: torch.Tensor  # [B] int64
    seed_lo: torch.Tensor  # [B] int64, low 32 bits
    seed_hi: torch.Tensor  # [B] int64, high 32 bits
    # The largest top_k of the rows (known on the host: no sync to read it): the filters keep at most this many codes
    # of a row, so the draw races only the candidates (`sample`). 0: unknown, race every code.
    max_kept: int = 0

    def tensors(self) -> list[torch.Tensor]:
        """The per-row parameter tensors (every field but `max_kept`)."""
        return [getattr(self, f.name) for f in fields(self) if f.name != "max_kept"]

    def prefix(self, n: int) -> SamplingBatch:
        """Views of the first `n` rows."""
        return SamplingBatch(*(t[:n] for t in self.tensors()), max_kept=self.max_kept)

    def text_rows(self, rows: torch.Tensor) -> SamplingBatch:
        """The parameters of `rows` for sampling one token from the text head (one 'codebook': the first's
        temperature)."""
        picked = SamplingBatch(*(t.index_select(0, rows) for t in self.tensors()), max_kept=self.max_kept)
        picked.temperature = picked.temperature[:, :1]
        return picked

    @classmethod
    def build(cls, params: list[SamplingParams], num_vq: int, num_codes: int, device: torch.device) -> SamplingBatch:
        top_k = [num_codes if p.top_k == 0 else min(max(p.top_k, MIN_TOKENS_TO_KEEP), num_codes) for p in params]
        return cls(
            temperature=torch.tensor([p.temperatures(num_vq) for p in params], dtype=torch.float32, device=device),
            top_p=torch.tensor([p.top_p for p in params], dtype=torch.float32, device=device),
            top_k=torch.tensor(top_k, dtype=torch.int64, device=device),
            penalty=torch.tensor([p.repetition_penalty for p in params], dtype=torch.float32, device=device),
            min_new_tokens=torch.tensor([p.min_new_tokens for p in params], dtype=torch.int64, device=device),
            seed_lo=torch.tensor([p.seed & _MASK32 for p in params], dtype=torch.int64, device=device),
            seed_hi=torch.tensor([(p.seed >> 32) & _MASK32 for p in params], dtype=torch.int64, device=device),
            max_kept=max(top_k, default=0),
        )


def penalty_counts(recent: torch.Tensor, num_codes: int) -> torch.Tensor:
    """recent [B, W, V] codes (-1 = empty) -> counts [B, V, C] of each code in the window."""
    batch, _, num_vq = recent.shape
    counts = torch.zeros(batch, num_vq, num_codes + 1, dtype=torch.float32, device=recent.device)
    counts.scatter_add_(2, (recent + 1).transpose(1, 2), torch.ones_like(recent, dtype=torch.float32).transpose(1, 2))
    return counts[..., 1:]


def process_logits(
    logits: torch.Tensor, counts: torch.Tensor, steps: torch.Tensor, params: SamplingBatch, eos: int | torch.Tensor
) -> torch.Tensor:
    """logits [B, V, C] float32 -> filtered scores (-inf where excluded), upstream's order. `eos` (an int, or a
    0-d int64 tensor: the ONNX sampling head takes it as an input) is masked before min_new_tokens."""
    scores = logits / params.temperature.unsqueeze(-1)
    alpha = torch.pow(params.penalty.view(-1, 1, 1), counts)
    scores = torch.where(scores < 0, scores * alpha, scores / alpha)
    # top-p, as transformers' TopPLogitsWarper: drop the low tail whose total mass is <= 1 - top_p. One ascending
    # sort serves both filters: the tail top-p drops is a run at the sorted front (the cumulative mass only grows).
    sorted_scores, order = torch.sort(scores, dim=-1, descending=False)
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = cumulative <= (1 - params.top_p).view(-1, 1, 1)
    drop_sorted[..., -MIN_TOKENS_TO_KEEP:] = False
    scores = scores.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    # top-k, as TopKLogitsWarper: drop everything below the k-th largest score left. The scores left are the sorted
    # ones after the dropped run, so that is sorted_scores[C - k]; where top-p left fewer than k, that position was
    # dropped and its score is no larger than any left, so nothing more goes: what a second sort would give.
    position = (scores.shape[-1] - params.top_k).view(-1, 1, 1).expand(-1, scores.shape[1], 1)
    scores = scores.masked_fill(scores < sorted_scores.gather(-1, position), float("-inf"))
    before_min = (steps < params.min_new_tokens).view(-1, 1, 1)
    is_eos = torch.arange(scores.shape[-1], device=scores.device) == eos
    return scores.masked_fill(before_min & is_eos, float("-inf"))


def _mix(x: torch.Tensor) -> torch.Tensor:
    """PCG-style 32-bit permutation on int64 tensors holding 32-bit values (no overflow)."""
    state = (x * 747796405 + 2891336453) & _MASK32
    word = (((state >> ((state >> 28) + 4)) ^ state) * 277803737) & _MASK32
    return ((word >> 22) ^ word) & _MASK32


def row_uniforms(params: SamplingBatch, steps: torch.Tensor, num_vq: int, num_codes: int) -> torch.Tensor:
    """Uniforms in (0, 1) [B, V, C], a pure function of (seed, step, codebook, code) per row."""
    lanes = torch.arange(num_vq * num_codes, device=steps.device, dtype=torch.int64).view(1, num_vq, num_codes)
    return _uniforms(params, steps, lanes)


def _uniforms(params: SamplingBatch, steps: torch.Tensor, lanes: torch.Tensor) -> torch.Tensor:
    """The uniforms of `lanes` ([1 or B, V, n] int64: codebook * C + code) of each row."""
    key = _mix(_mix(params.seed_lo ^ _mix(params.seed_hi)) ^ (steps & _MASK32))  # [B]
    bits = _mix(_mix(key.view(-1, 1, 1) ^ lanes) + lanes)
    return (bits.double() + 0.5) / 2**32


def sample(scores: torch.Tensor, params: SamplingBatch, steps: torch.Tensor) -> torch.Tensor:
    """scores [B, V, C] -> codes [B, V]: the argmax of p / Exp(1), i.e. a categorical draw from softmax(scores).

    On the CPU, where the hash over every lane is most of a small model's step: codes the filters dropped have p = 0
    and cannot win, and top-k keeps at most `params.max_kept` codes a row (more only when scores tie at its cut), so
    when no row kept more, the race runs over the `max_kept` highest scores alone, in code order so that a tie breaks
    as over every code: the same draw, hashing ~20 lanes a codebook instead of 626 (21,178 for the text head). On a
    GPU the full race is a few cheap kernels, and checking the kept counts would cost a host sync per step."""
    probs = scores.softmax(dim=-1).double()
    num_vq, num_codes = scores.shape[1], scores.shape[2]
    few = scores.device.type in CANDIDATE_RACE_DEVICES and 0 < params.max_kept < num_codes
    if not few or int(torch.isfinite(scores).sum(dim=-1).max()) > params.max_kept:
        exponential = -torch.log(row_uniforms(params, steps, num_vq, num_codes))
        return (probs / exponential).argmax(dim=-1)
    candidates = scores.topk(params.max_kept, dim=-1, sorted=False).indices.sort(dim=-1).values  # [B, V, k]
    lanes = torch.arange(num_vq, device=scores.device, dtype=torch.int64).view(1, num_vq, 1) * num_codes + candidates
    race = probs.gather(-1, candidates) / -torch.log(_uniforms(params, steps, lanes))
    return candidates.gather(-1, race.argmax(dim=-1, keepdim=True)).squeeze(-1)
