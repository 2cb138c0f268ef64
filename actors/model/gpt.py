"""LLaMA backbone of the ChatTTS code generator, over a paged KV cache.

Pure modules: no sampling, no I/O, no device choice. Parameter names follow HF `LlamaModel` (without the
`model.` prefix and without `embed_tokens`), which is how asset/gpt/model.safetensors stores them.

Each batch row carries its own absolute positions and its own block table into the shared cache, so rows of
different lengths share a step without padding tricks; rows are read in groups (`ReadGroup`), each group only up
to its longest row, so a step reads about each row's own context instead of every row up to the longest one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import AttentionMetadata, ReadGroup, attention_metadata
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


class PagedKVCache:
    """Keys and values of every layer in fixed-size blocks shared by all rows: [kv_heads, blocks, block_size,
    head_dim] per layer (heads first, so the blocks a group of rows reads gather into one contiguous
    [kv_heads, rows, tokens, head_dim] tensor that the attention matmuls use in place).

    A row's position p lives in block `table[p // block_size]` at offset `p % block_size`; which blocks a row owns
    is the caller's business (`actors.engine.blocks`). Block 0 is the null block: never handed to a row, it takes
    the writes of idle rows and pads tables, and is only ever read at masked positions. Blocks start uninitialised
    (`zero_blocks` clears them before first use), so a pool planned larger than what rows use costs no resident
    memory on CPU.
    """

    def __init__(
        self,
        config: GPTConfig,
        blocks: int,
        block_size: int,
        device: torch.device | str,
        dtype: torch.dtype,
    ) -> None:
        if blocks < 2:
            raise ValueError(f"a paged cache needs the null block and at least one more, got {blocks} blocks")
        shape = (config.num_key_value_heads, blocks, block_size, config.head_dim)
        self.keys = [torch.empty(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.values = [torch.empty(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.blocks = blocks
        self.block_size = block_size
        self.zero_blocks(0, 1)

    def zero_blocks(self, start: int, stop: int) -> None:
        """Clear blocks [start, stop) of every layer (masked reads multiply their values by zero: no NaN allowed)."""
        for tensor in (*self.keys, *self.values):
            tensor[:, start:stop].zero_()

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
    """q [heads, rows, S, D], k and v [kv_heads, rows, T, D], mask [rows, S, T] -> [heads, rows, S, D]: matmuls
    with a float32 softmax. On CPU this beats the fused kernel for decode shapes (about 5x in bfloat16, equal in
    float32; see benchmarks/RESULTS.md)."""
    if k.shape[0] != q.shape[0]:
        k = k.repeat_interleave(q.shape[0] // k.shape[0], dim=0)
        v = v.repeat_interleave(q.shape[0] // v.shape[0], dim=0)
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
        metadata: AttentionMetadata,
    ) -> torch.Tensor:
        """Write this call's keys and values where `metadata` says, then attend: every read group gathers its
        blocks once (`actors.model.attention`)."""
        batch, seq, _ = x.shape
        q = self.q_proj(x).view(batch, seq, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, seq, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, seq, self.n_kv_heads, self.head_dim)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        blocks, offsets = metadata.write_blocks, metadata.write_offsets
        cache_k[:, blocks, offsets] = k.permute(1, 0, 2, 3)  # [kv_heads, B, S, D]
        cache_v[:, blocks, offsets] = v.permute(2, 0, 1, 3)
        width = self.n_heads * self.head_dim
        out = None if len(metadata.reads) == 1 else x.new_empty(batch, seq, width)
        heads_kv, blocks, size, dim = cache_k.shape
        for read in metadata.reads:
            rows, flat, shape, keys, mask = read.rows, read.index, read.shape, read.keys, read.mask
            group_q = q if rows is None else q[rows]
            rows_read = shape[1]
            k_read = cache_k.view(heads_kv * blocks, size * dim).index_select(0, flat).view(shape)[:, :, :keys]
            v_read = cache_v.view(heads_kv * blocks, size * dim).index_select(0, flat).view(shape)[:, :, :keys]
            if x.device.type == "cpu":
                part = _math_attention(group_q.transpose(0, 1), k_read, v_read, mask).transpose(0, 1)
            else:
                part = F.scaled_dot_product_attention(
                    group_q,
                    k_read.transpose(0, 1),
                    v_read.transpose(0, 1),
                    attn_mask=mask.unsqueeze(1),
                    enable_gqa=self.n_kv_heads != self.n_heads,
                )
            part = part.transpose(1, 2).reshape(rows_read, seq, width)
            if out is None:
                out = part
            else:
                out[rows] = part
        return self.o_proj(out)


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
        cache: PagedKVCache,
        tables: torch.Tensor,
        groups: list[ReadGroup],
    ) -> torch.Tensor:
        """Run `embeds` [B, S, H] at absolute `positions` [B, S] of the rows whose block tables are `tables` [B, nb].

        Each row attends to its own cached tokens at positions <= the query position. `groups` split the rows by
        how far they read (`ReadGroup`); one group of all rows (None) reads every row up to the group's keys.
        """
        freqs = positions.unsqueeze(-1).float() * self.inv_freq
        angles = torch.cat((freqs, freqs), dim=-1)
        cos = angles.cos().to(embeds.dtype).unsqueeze(1)
        sin = angles.sin().to(embeds.dtype).unsqueeze(1)
        metadata = attention_metadata(positions, tables, groups, tuple(cache.keys[0].shape))
        x = embeds
        for layer, cache_k, cache_v in zip(self.layers, cache.keys, cache.values, strict=True):
            x = x + layer.self_attn(layer.input_layernorm(x), cos, sin, cache_k, cache_v, metadata)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.norm(x)
