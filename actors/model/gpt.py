"""LLaMA backbone of the ChatTTS code generator, with a preallocated per-slot KV cache.

Pure modules: no sampling, no I/O, no device choice. Parameter names follow HF `LlamaModel` (without the
`model.` prefix and without `embed_tokens`), which is how asset/gpt/model.safetensors stores them.

Batch rows are KV-cache *slots*: row b of the input always reads and writes slot b of the cache, and each row
carries its own absolute positions, so rows of different lengths share a step without padding tricks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import GPTConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight * x32.to(dtype)).to(dtype)


class KVCache:
    """Preallocated keys and values for every layer: [slots, max_tokens, kv_heads, head_dim] each."""

    def __init__(
        self,
        config: GPTConfig,
        slots: int,
        max_tokens: int,
        device: torch.device | str,
        dtype: torch.dtype,
    ) -> None:
        shape = (slots, max_tokens, config.num_key_value_heads, config.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.slots = slots
        self.max_tokens = max_tokens

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


def rope_inv_freq(config: GPTConfig, device: torch.device | str = "cpu") -> torch.Tensor:
    # An explicit device: under a `torch.device("meta")` build context, meta math would import torch's
    # decomposition tables (~2 s of start-up per engine replica) for a buffer that is rebuilt after loading.
    exponents = torch.arange(0, config.head_dim, 2, dtype=torch.int64, device=device).float() / config.head_dim
    return 1.0 / (config.rope_theta**exponents)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention as matmuls with a float32 softmax. On CPU this beats the fused kernel for decode shapes (about 5x
    in bfloat16, equal in float32; see benchmarks/RESULTS.md)."""
    if k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    scores = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    weights = scores.masked_fill(~mask, float("-inf")).float().softmax(dim=-1).to(q.dtype)
    return weights @ v


class Attention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_heads = config.num_attention_heads
        self.n_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, hidden, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache_k: torch.Tensor,
        cache_v: torch.Tensor,
        positions: torch.Tensor,
        kv_len: int,
        mask: torch.Tensor,
        slots: torch.Tensor | None,
    ) -> torch.Tensor:
        batch, seq, _ = x.shape
        q = self.q_proj(x).view(batch, seq, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, seq, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, seq, self.n_kv_heads, self.head_dim)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        rows = torch.arange(batch, device=x.device) if slots is None else slots
        rows = rows.unsqueeze(1).expand(batch, seq)
        cache_k.index_put_((rows, positions), k.transpose(1, 2))
        cache_v.index_put_((rows, positions), v)
        if slots is None:  # rows are slots 0..B-1: read the cache in place
            keys, values = cache_k[:batch, :kv_len], cache_v[:batch, :kv_len]
        else:  # a subset of slots (prefill of admitted rows): gather their prefixes
            keys, values = cache_k[slots, :kv_len], cache_v[slots, :kv_len]
        keys, values = keys.transpose(1, 2), values.transpose(1, 2)
        if x.device.type == "cpu":
            out = _math_attention(q, keys, values, mask)
        else:
            out = F.scaled_dot_product_attention(
                q, keys, values, attn_mask=mask, enable_gqa=self.n_kv_heads != self.n_heads
            )
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, self.n_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)


class LlamaBackbone(nn.Module):
    """`LlamaModel` without token embeddings: input embeddings in, final-normed hidden states out."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList([DecoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.register_buffer("inv_freq", rope_inv_freq(config), persistent=False)

    def reset_derived_buffers(self, device: torch.device | str) -> None:
        self.register_buffer("inv_freq", rope_inv_freq(self.config, device), persistent=False)

    def forward(
        self,
        embeds: torch.Tensor,
        positions: torch.Tensor,
        cache: KVCache,
        kv_len: int,
        slots: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run `embeds` [B, S, H] at absolute `positions` [B, S] of cache `slots` [B] (default 0..B-1).

        Each row attends to its own cached tokens at positions <= the query position; `kv_len` bounds the
        positions any row uses this call (max position + 1), so the attention reads only that prefix.
        """
        freqs = positions.unsqueeze(-1).float() * self.inv_freq
        angles = torch.cat((freqs, freqs), dim=-1)
        cos = angles.cos().to(embeds.dtype).unsqueeze(1)
        sin = angles.sin().to(embeds.dtype).unsqueeze(1)
        key_positions = torch.arange(kv_len, device=embeds.device)
        mask = (key_positions.view(1, 1, kv_len) <= positions.unsqueeze(-1)).unsqueeze(1)
        x = embeds
        for layer, cache_k, cache_v in zip(self.layers, cache.keys, cache.values, strict=True):
            x = x + layer.self_attn(
                layer.input_layernorm(x), cos, sin, cache_k, cache_v, positions, kv_len, mask, slots
            )
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.norm(x)
