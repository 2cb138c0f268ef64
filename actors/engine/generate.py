"""One-call generation over the continuous batcher, and waveform decoding.

The engine knows nothing about text: it takes token ids, an optional speaker vector and optional reference codes
per row. Rows never influence each other: each has its own positions and KV-cache slot (no left padding), its
own sampling parameters and its own counter-based random stream (see batcher.py and sampling.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..model.chattts import ChatTTSModel
from ..model.config import HOP_LENGTH, frames_to_samples
from ..model.vocos import frame_mask
from .batcher import ContinuousBatcher
from .memory import SlotPlan
from .prompt import CodePrompt
from .sampling import SamplingParams


@dataclass
class Generated:
    codes: torch.Tensor  # [T, num_vq] int64, EOS step excluded
    hidden: torch.Tensor  # [T, H] the final-normed hidden state that produced each kept step
    finished: bool  # True: ended with EOS; False: stopped at max_new_tokens


@torch.inference_mode()
def generate(
    model: ChatTTSModel,
    prompts: list[CodePrompt],
    params: list[SamplingParams],
    spk_emb_id: int,
    check_every: int = 1,
    slots: int | None = None,
) -> list[Generated]:
    """Generate codes for every prompt through a continuous batcher with `slots` slots (default: one per row)."""
    if len(prompts) != len(params):
        raise ValueError(f"got {len(prompts)} prompts but {len(params)} sampling parameter sets")
    if not prompts:
        return []
    config = model.config.gpt
    longest = max(p.length for p in prompts)
    max_new = max(p.max_new_tokens for p in params)
    if longest + max_new > config.max_position_embeddings:
        raise ValueError(
            f"prompt of {longest} tokens + {max_new} new tokens exceeds the model's "
            f"{config.max_position_embeddings} positions; shorten the text or lower max_new_tokens"
        )
    plan = SlotPlan(
        slots=min(slots or len(prompts), len(prompts)),
        slot_tokens=longest + max_new,
        max_new_tokens=max_new,
        prefill_chunk=512,
        kv_bytes=0,
        buffer_bytes=0,
        reserve_bytes=0,
        budget_bytes=0,
    )
    batcher = ContinuousBatcher(model, plan, spk_emb_id, check_every)
    for index, (prompt, row_params) in enumerate(zip(prompts, params, strict=True)):
        batcher.submit(index, prompt, row_params)
    out: list[Generated | None] = [None] * len(prompts)
    for row in batcher.run():
        out[row.key] = Generated(
            codes=row.codes.clone(), hidden=row.hidden.to(torch.float32, copy=True), finished=row.finished
        )
    return out  # type: ignore[return-value]


@torch.inference_mode()
def decode_waveforms(model: ChatTTSModel, rows: list[torch.Tensor], use_decoder: bool = True) -> list[torch.Tensor]:
    """Hidden states [T, H] (use_decoder) or codes [T, num_vq] per row -> float32 waveforms of 512*T-256 samples.

    Rows are zero-padded into one batch; masks keep every row identical to decoding it alone.
    """
    if not rows:
        return []
    device = model.device
    dtype = model.dtype
    steps = [int(r.shape[0]) for r in rows]
    out: list[torch.Tensor | None] = [None] * len(rows)
    live = [i for i, n in enumerate(steps) if n > 0]
    for i, n in enumerate(steps):
        if n == 0:
            out[i] = torch.zeros(0, dtype=torch.float32, device=device)
    if live:
        longest = max(steps[i] for i in live)
        width = rows[live[0]].shape[1]
        padded = torch.zeros(len(live), width, longest, device=device, dtype=dtype if use_decoder else torch.int64)
        for j, i in enumerate(live):
            padded[j, :, : steps[i]] = rows[i].t().to(padded.dtype)
        mel_frames = torch.tensor([2 * steps[i] for i in live], device=device)
        mask = frame_mask(mel_frames, 2 * longest).to(dtype)
        mel = model.decoder(padded, mask) if use_decoder else model.dvae(padded, mask)
        waves = model.vocos(mel, mel_frames)
        for j, i in enumerate(live):
            length = frames_to_samples(steps[i])
            assert length == HOP_LENGTH * (2 * steps[i] - 1)
            out[i] = waves[j, :length]
    return out  # type: ignore[return-value]
