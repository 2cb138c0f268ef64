"""The exportable blocks of the ChatTTS model: thin torch modules over the real ones, one ONNX graph each.

The GPT is exported blockwise: the embedding block, ONE decoder-layer graph (every layer has the same structure;
each layer's file holds that graph with its own weights), the final norm, the code and text heads, and the sampling
head. Each block is verified on its own at export (`actors.onnx.export`), quantised on its own, and run on its own
by the onnxruntime backend (`actors.onnx.runtime`), which keeps the engine's paged KV cache in its own buffers:

A layer graph gets the layer's whole KV pool ([kv_heads, blocks, block_size, head_dim], bound by pointer, never
copied), the (head, block) rows to gather from it (the same index for every layer of a step), and the hidden states
and absolute positions of this call's tokens; it attends to the gathered past (positions below the row's first
query) and causally to this call's own keys, and returns the hidden states and this call's keys and values, which the
host writes into the pool at the rows' positions (a few KiB a step). So the graph needs no in-place update and the
cache is never copied whole.

Numerics follow `actors.model` exactly (same ops in the same order per element, float32 softmax); only the key
order inside the softmax differs (past, then this call's keys), so outputs agree to float rounding.
"""

from __future__ import annotations

import torch
from torch import nn

from ..engine.sampling import SamplingBatch, process_logits
from ..model.chattts import ChatTTSModel
from ..model.config import GPTConfig
from ..model.dvae import DVAE, HiddenDecoder
from ..model.gpt import DecoderLayer, RMSNorm, rope_inv_freq
from ..model.vocos import Vocos, frame_mask

# Kinds of positions in the embedding block's input.
TEXT, CODES, SPEAKER = 0, 1, 2


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class EmbedBlock(nn.Module):
    """ids [N] int64, codes [N, num_vq] int64, kind [N] int64 (TEXT, CODES, SPEAKER), speaker [N, H] -> [N, H]:
    text positions embed their id, code positions the sum of the codebooks' embeddings (in codebook order), speaker
    positions take the given (already normalised) speaker vector."""

    def __init__(self, model: ChatTTSModel) -> None:
        super().__init__()
        self.embed = model.embed

    def forward(self, ids: torch.Tensor, codes: torch.Tensor, kind: torch.Tensor, speaker: torch.Tensor):
        text = self.embed.embed_text(ids)
        code = self.embed.embed_codes(codes).to(text.dtype)
        out = torch.where((kind == CODES).unsqueeze(-1), code, text)
        return torch.where((kind == SPEAKER).unsqueeze(-1), speaker.to(text.dtype), out)


class LayerBlock(nn.Module):
    """One decoder layer over the paged KV cache (see the module docstring).

    x [B, S, H], positions [B, S] int64 (absolute; a row's past is every position below positions[:, 0]),
    k_pool and v_pool [kv_heads, blocks, block_size, head_dim], read_index [kv_heads * B * nb] int64 (rows of the
    pool viewed as [kv_heads * blocks, block_size * head_dim], head-major: `actors.model.attention.gather_index`)
    -> x' [B, S, H], keys and values of this call [kv_heads, B, S, head_dim]."""

    def __init__(self, layer: DecoderLayer, config: GPTConfig) -> None:
        super().__init__()
        self.layer = layer
        self.n_heads = config.num_attention_heads
        self.n_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.register_buffer("inv_freq", rope_inv_freq(config), persistent=False)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        k_pool: torch.Tensor,
        v_pool: torch.Tensor,
        read_index: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        attn = self.layer.self_attn
        batch, seq, _ = x.shape
        freqs = positions.unsqueeze(-1).float() * self.inv_freq
        angles = torch.cat((freqs, freqs), dim=-1)
        cos = angles.cos().to(x.dtype).unsqueeze(0)  # [1, B, S, D]: heads first
        sin = angles.sin().to(x.dtype).unsqueeze(0)
        h = self.layer.input_layernorm(x)
        # Heads first ([heads, B, S, D]), as the pool stores them: the gathered past is used where it lies, never
        # transposed (a transpose of the past is a copy of it in onnxruntime: half a layer's time at batch 16).
        q = attn.q_proj(h).view(batch, seq, self.n_heads, self.head_dim).permute(2, 0, 1, 3)
        k = attn.k_proj(h).view(batch, seq, self.n_kv_heads, self.head_dim).permute(2, 0, 1, 3)
        v = attn.v_proj(h).view(batch, seq, self.n_kv_heads, self.head_dim).permute(2, 0, 1, 3)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        heads_kv, blocks, size, dim = k_pool.shape
        past_k = k_pool.reshape(heads_kv * blocks, size * dim).index_select(0, read_index)
        past_v = v_pool.reshape(heads_kv * blocks, size * dim).index_select(0, read_index)
        past_k = past_k.reshape(heads_kv, batch, -1, dim)  # [kv_heads, B, T, D]
        past_v = past_v.reshape(heads_kv, batch, -1, dim)
        new_k, new_v = k, v
        if self.n_kv_heads != self.n_heads:
            group = self.n_heads // self.n_kv_heads
            past_k, past_v = past_k.repeat_interleave(group, dim=0), past_v.repeat_interleave(group, dim=0)
            new_k, new_v = new_k.repeat_interleave(group, dim=0), new_v.repeat_interleave(group, dim=0)
        past_len = past_k.shape[2]
        past = torch.arange(past_len, device=x.device).view(1, 1, -1) < positions[:, :1].unsqueeze(-1)
        steps = torch.arange(seq, device=x.device)
        causal = steps.view(1, -1) <= steps.view(-1, 1)  # [S (query), S (key)]
        mask = torch.cat([past.expand(batch, seq, -1), causal.unsqueeze(0).expand(batch, -1, -1)], dim=-1)
        # Scores against the past and against this call's keys apart, joined only as scores: the keys and values
        # are never concatenated (a copy of the whole gathered past in onnxruntime).
        scale = self.head_dim**-0.5
        scores = torch.cat([(q @ past_k.transpose(-1, -2)) * scale, (q @ new_k.transpose(-1, -2)) * scale], dim=-1)
        weights = scores.masked_fill(~mask.unsqueeze(0), float("-inf")).float().softmax(dim=-1).to(q.dtype)
        mixed = weights[..., :past_len] @ past_v + weights[..., past_len:] @ new_v  # [heads, B, S, D]
        out = mixed.permute(1, 2, 0, 3).reshape(batch, seq, self.n_heads * self.head_dim)
        x = x + attn.o_proj(out)
        x = x + self.layer.mlp(self.layer.post_attention_layernorm(x))
        return x, k, v


class NormBlock(nn.Module):
    """x [B, S, H] -> the final RMSNorm (the hidden states the heads and the Decoder read)."""

    def __init__(self, norm: RMSNorm) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


class CodeHeadBlock(nn.Module):
    """hidden [N, H] -> code logits [N, num_vq, num_audio_tokens] float32 (the merged code heads)."""

    def __init__(self, model: ChatTTSModel) -> None:
        super().__init__()
        self.embed = model.embed

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.embed.code_logits(hidden).float()


class TextHeadBlock(nn.Module):
    """hidden [N, H] -> text logits [N, num_text_tokens] float32 (the refine-text stage's head)."""

    def __init__(self, model: ChatTTSModel) -> None:
        super().__init__()
        self.embed = model.embed

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.embed.text_logits(hidden).float()


class SamplingHeadBlock(nn.Module):
    """Upstream's logits chain (`actors.engine.sampling.process_logits`, the same function): temperature, repetition
    penalty, top-p, top-k, the end token masked before min_new_tokens. logits and counts [B, V, C] float32, steps [B],
    temperature [B, V], top_p [B], top_k [B] (already clamped to [3, C]), penalty [B], min_new_tokens [B], eos []
    int64 -> scores [B, V, C] (-inf where excluded). The random draw stays in the host: per-row counter-based
    streams (`sampling.sample`) are exact there, and cheap."""

    def forward(
        self,
        logits: torch.Tensor,
        counts: torch.Tensor,
        steps: torch.Tensor,
        temperature: torch.Tensor,
        top_p: torch.Tensor,
        top_k: torch.Tensor,
        penalty: torch.Tensor,
        min_new_tokens: torch.Tensor,
        eos: torch.Tensor,
    ) -> torch.Tensor:
        params = SamplingBatch(temperature, top_p, top_k, penalty, min_new_tokens, steps, steps)
        return process_logits(logits, counts, steps, params, eos)


class DecoderBlock(nn.Module):
    """The hidden-state Decoder: hidden [B, H, T], frames [B] int64 (real mel frames per row, 2 per step) -> mel
    [B, n_mels, 2T]."""

    def __init__(self, decoder: HiddenDecoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, hidden: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        mask = frame_mask(frames, 2 * hidden.shape[-1]).to(hidden.dtype)
        return self.decoder(hidden, mask)


class DVAEDecodeBlock(nn.Module):
    """The DVAE decoder: codes [B, num_vq, T] int64, frames [B] int64 -> mel [B, n_mels, 2T]."""

    def __init__(self, dvae: DVAE) -> None:
        super().__init__()
        self.dvae = dvae

    def forward(self, codes: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        mask = frame_mask(frames, 2 * codes.shape[-1]).to(self.dvae.out_conv.weight.dtype)
        return self.dvae(codes, mask)


class DVAEEncodeBlock(nn.Module):
    """Reference audio -> prompt codes: 24 kHz mono audio [samples] -> codes [num_vq, (1 + samples // 256) // 2]
    int64 (the DVAE's log-mel front end, its STFT included, then its encoder and quantiser: `DVAE.encode`)."""

    def __init__(self, dvae: DVAE) -> None:
        super().__init__()
        self.dvae = dvae

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.dvae.encode(audio)


class VocosBlock(nn.Module):
    """Vocos up to the inverse STFT: mel [B, n_mels, F], frames [B] int64 -> the complex spectrum as real and imaginary
    parts [B, n_fft/2 + 1, F] float32. The ISTFT (an irfft and an overlap-add) runs in the host
    (`actors.model.vocos.istft`), exactly as the torch backend runs it."""

    def __init__(self, vocos: Vocos) -> None:
        super().__init__()
        self.vocos = vocos

    def forward(self, mel: torch.Tensor, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = frame_mask(frames, mel.shape[-1]).to(mel.dtype)
        features = self.vocos.backbone(mel, mask)
        x = self.vocos.head.out(features).transpose(1, 2).float()
        log_mag, phase = x.chunk(2, dim=1)
        magnitude = torch.exp(log_mag).clip(max=1e2)
        return magnitude * torch.cos(phase), magnitude * torch.sin(phase)
