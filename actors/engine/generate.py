"""Code generation and waveform decoding for a batch of prompts on one model replica.

The engine knows nothing about text: it takes token ids, an optional speaker vector and optional reference codes
per row. Rows never influence each other: each has its own positions and KV-cache slot (no left padding), its
own sampling parameters and its own counter-based random stream. Rows that finish stop counting; the loop ends
when every row has finished (checked every `check_every` steps so the device need not sync each step).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..model import ChatTTSModel, KVCache
from ..model.config import HOP_LENGTH, frames_to_samples
from ..model.vocos import frame_mask
from .sampling import PENALTY_WINDOW, SamplingBatch, SamplingParams, penalty_counts, process_logits, sample


@dataclass
class CodePrompt:
    """One row's GPT input: text token ids, then optional reference codes [num_vq, P] (after [Ptts])."""

    token_ids: list[int]
    speaker: torch.Tensor | None = None  # L2-normalised float16 [H], placed at every [spk_emb] position
    reference_codes: torch.Tensor | None = None

    @property
    def length(self) -> int:
        extra = 0 if self.reference_codes is None else int(self.reference_codes.shape[1])
        return len(self.token_ids) + extra


@dataclass
class Generated:
    codes: torch.Tensor  # [T, num_vq] int64, EOS step excluded
    hidden: torch.Tensor  # [T, H] the final-normed hidden state that produced each kept step
    finished: bool  # True: ended with EOS; False: stopped at max_new_tokens


def prompt_embeddings(model: ChatTTSModel, prompt: CodePrompt, spk_emb_id: int) -> torch.Tensor:
    device = model.device
    ids = torch.tensor(prompt.token_ids, dtype=torch.int64, device=device)
    text = model.embed.embed_text(ids)
    if prompt.speaker is not None:
        speaker = prompt.speaker.to(device=device, dtype=text.dtype)
        text = torch.where((ids == spk_emb_id).unsqueeze(-1), speaker, text)
    if prompt.reference_codes is None or prompt.reference_codes.shape[1] == 0:
        return text
    codes = prompt.reference_codes.to(device=device, dtype=torch.int64).t()
    return torch.cat([text, model.embed.embed_codes(codes).to(text.dtype)], dim=0)


@torch.inference_mode()
def generate(
    model: ChatTTSModel,
    prompts: list[CodePrompt],
    params: list[SamplingParams],
    spk_emb_id: int,
    check_every: int = 1,
) -> list[Generated]:
    """Generate codes for every prompt; one static batch (rows stop independently)."""
    if len(prompts) != len(params):
        raise ValueError(f"got {len(prompts)} prompts but {len(params)} sampling parameter sets")
    if not prompts:
        return []
    config = model.config.gpt
    device = model.device
    dtype = model.embed.emb_text.weight.dtype
    batch = len(prompts)
    lengths = [p.length for p in prompts]
    if min(lengths) == 0:
        raise ValueError("every prompt needs at least one token")
    max_new = max(p.max_new_tokens for p in params)
    longest = max(lengths)
    if longest + max_new > config.max_position_embeddings:
        raise ValueError(
            f"prompt of {longest} tokens + {max_new} new tokens exceeds the model's "
            f"{config.max_position_embeddings} positions; shorten the text or lower max_new_tokens"
        )
    cache = KVCache(config, batch, longest + max_new, device, dtype)

    # Prefill: right-padded, each row at positions 0..L-1 of its own slot. Padding writes cache entries past a
    # row's end that its decode steps overwrite before any query can reach them.
    embeds = torch.zeros(batch, longest, config.hidden_size, device=device, dtype=dtype)
    for row, prompt in enumerate(prompts):
        embeds[row, : lengths[row]] = prompt_embeddings(model, prompt, spk_emb_id)
    positions = torch.arange(longest, device=device).unsqueeze(0).expand(batch, longest)
    hidden_all = model.gpt(embeds, positions, cache, longest)
    last = torch.tensor([n - 1 for n in lengths], device=device)
    hidden = hidden_all[torch.arange(batch, device=device), last]  # [B, H]
    del hidden_all, embeds

    sampling = SamplingBatch.build(params, config.num_vq, config.num_audio_tokens, device)
    row_max_new = torch.tensor([p.max_new_tokens for p in params], device=device)
    codes_out = torch.zeros(batch, max_new, config.num_vq, dtype=torch.int64, device=device)
    hidden_out = torch.zeros(batch, max_new, config.hidden_size, dtype=torch.float32, device=device)
    recent = torch.full((batch, PENALTY_WINDOW, config.num_vq), -1, dtype=torch.int64, device=device)
    produced = torch.zeros(batch, dtype=torch.int64, device=device)  # kept steps per row
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    ended_by_eos = torch.zeros(batch, dtype=torch.bool, device=device)
    next_position = torch.tensor(lengths, device=device)

    for step in range(max_new):
        steps = torch.full((batch,), step, dtype=torch.int64, device=device)
        logits = model.embed.code_logits(hidden).float()
        scores = process_logits(
            logits, penalty_counts(recent, config.num_audio_tokens), steps, sampling, config.eos_code
        )
        tokens = sample(scores, sampling, steps)  # [B, V]
        eos = (tokens == config.eos_code).any(-1)
        live = ~done
        keep = live & ~eos
        codes_out[:, step] = tokens
        hidden_out[:, step] = hidden.float()
        produced += keep.long()
        ended_by_eos |= live & eos
        done |= eos | (produced >= row_max_new)
        recent[:, step % PENALTY_WINDOW] = tokens
        if (step + 1) % check_every == 0 and bool(done.all()):
            break
        embeds = model.embed.embed_codes(tokens).to(dtype).unsqueeze(1)
        hidden = model.gpt(embeds, next_position.unsqueeze(1), cache, longest + step + 1)[:, 0]
        next_position += 1

    counts = produced.tolist()
    eos_flags = ended_by_eos.tolist()
    return [
        Generated(codes=codes_out[row, : counts[row]], hidden=hidden_out[row, : counts[row]], finished=eos_flags[row])
        for row in range(batch)
    ]


@torch.inference_mode()
def decode_waveforms(model: ChatTTSModel, rows: list[torch.Tensor], use_decoder: bool = True) -> list[torch.Tensor]:
    """Hidden states [T, H] (use_decoder) or codes [T, num_vq] per row -> float32 waveforms of 512*T-256 samples.

    Rows are zero-padded into one batch; masks keep every row identical to decoding it alone.
    """
    if not rows:
        return []
    device = model.device
    dtype = model.embed.emb_text.weight.dtype
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
