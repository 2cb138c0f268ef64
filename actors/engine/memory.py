"""Memory planning of the engine: how a byte budget becomes KV-cache slots, and the shapes a decode step runs at.

`plan_slots` turns a byte budget into a slot count from the model's own KV bytes per token, the per-slot
reservation (prompt + new tokens) and the activation reserve (the largest of one decode step, one prefill pass and
the waveform decode). `step_shape` gives the (rows, cache prefix) a step computes on each device and compile mode.
Pure arithmetic over configs and dtypes: nothing here allocates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..model.config import GPTConfig, ModelConfig
from .sampling import PENALTY_WINDOW

# Engine `compile` setting -> torch.compile mode ("off" runs the step eagerly).
COMPILE_MODES = {"off": None, "inductor": "default", "cudagraphs": "reduce-overhead"}


@dataclass(frozen=True)
class SlotPlan:
    """How a byte budget is spent: `slots` rows of `slot_tokens` cache tokens each, plus a fixed reserve."""

    slots: int
    slot_tokens: int
    max_new_tokens: int
    prefill_chunk: int
    kv_bytes: int
    buffer_bytes: int
    reserve_bytes: int
    budget_bytes: int
    decode_bytes: int = 0  # transient bytes allowed for decoding finished rows to waveforms

    @property
    def planned_bytes(self) -> int:
        return self.kv_bytes + self.buffer_bytes + self.reserve_bytes


def _bytes_per_element(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def slot_bytes(config: GPTConfig, dtype: torch.dtype, slot_tokens: int, max_new_tokens: int) -> tuple[int, int]:
    """(KV-cache bytes, other per-slot buffer bytes) of one slot: every tensor `ContinuousBatcher` preallocates."""
    e = _bytes_per_element(dtype)
    kv = config.kv_bytes_per_token(e) * slot_tokens
    # outputs (codes, hidden_out), the penalty window, and the hidden state the next step samples from
    hidden = (max_new_tokens + 1) * config.hidden_size * e
    codes = max_new_tokens * config.num_vq * 8 + PENALTY_WINDOW * config.num_vq * 8
    # positions, counters, flags and sampling parameters (< 100 bytes)
    return kv, hidden + codes + 256


def forward_bytes(config: GPTConfig, dtype: torch.dtype, queries: int, row_keys: int, query_keys: int) -> int:
    """Upper estimate of the transient bytes of one GPT forward (one layer's temporaries are alive at a time).

    `queries`: rows x query tokens; `row_keys`: rows x attended cache positions; `query_keys`: queries x attended
    cache positions.
    """
    e = _bytes_per_element(dtype)
    h, inter, heads = config.hidden_size, config.intermediate_size, config.num_attention_heads
    kv_dim = config.num_key_value_heads * config.head_dim
    # per query token: residual stream, q/k/v/o with rotary temporaries, MLP gate/up/product in the model dtype,
    # RMSNorm and rotary angles in float32
    token = (12 * h + 2 * kv_dim + 3 * inter) * e + 3 * h * 4 + 4 * config.head_dim * 4
    # per (query, key): up to three float32 copies of every head's attention scores (CPU softmax), mask and negation
    score = heads * 3 * 4 + 2
    # per (row, key): the CPU matmuls copy the keys, then the values, to contiguous memory (with GQA both are
    # expanded to every head instead). CUDA's fused attention reads them in place; the estimate keeps them anyway.
    kv = (2 * h if kv_dim < h else kv_dim) * e
    return queries * token + query_keys * score + row_keys * kv


def activation_parts(
    config: GPTConfig, dtype: torch.dtype, slots: int, slot_tokens: int, prefill_chunk: int
) -> tuple[int, int]:
    """(one decode step over `slots` with sampling, one prefill pass): upper estimates of their transient bytes.

    A prefill pass runs at most `prefill_chunk` query tokens over all its rows (see `ContinuousBatcher._prefill`):
    rows x their longest prompt <= `prefill_chunk`, or one row whose prompt is longer, a chunk at a time. So a
    pass holds at most max(prefill_chunk, slot_tokens) row x cache positions and prompt embeddings. Compaction
    (`ContinuousBatcher._compact`) copies at most half the slots' entries of one cache tensor at a time, less than
    the decode step's per-row keys and values.
    """
    e = _bytes_per_element(dtype)
    h, num_vq = config.hidden_size, config.num_vq
    kv_dim = config.num_key_value_heads * config.head_dim
    codes = num_vq * config.num_audio_tokens
    decode = forward_bytes(config, dtype, slots, slots * slot_tokens, slots * slot_tokens)
    # sampling in fp32/fp64: logits, scaled, sorted values+indices, cumsum, masks, uniforms, probabilities; the
    # sampled codes' embeddings (one per codebook, stacked, summed)
    sampling = slots * (codes * (4 * 8 + 8 * 6) + (num_vq + 2) * h * e)
    pass_keys = max(prefill_chunk, slot_tokens)
    prefill = forward_bytes(config, dtype, prefill_chunk, pass_keys, prefill_chunk * slot_tokens)
    # the keys and values gathered from the pass's slots, its padded prompt embeddings, one prompt's embedding
    # temporaries (ids, text, speaker, code embeddings stacked per codebook), the rows' last hidden states
    prefill += pass_keys * (2 * kv_dim + h) * e + slot_tokens * (8 + (num_vq + 3) * h * 4) + 3 * prefill_chunk * h * e
    return decode + sampling, prefill


def decode_bytes_per_mel_frame(config: ModelConfig, dtype: torch.dtype) -> int:
    """Upper estimate of transient bytes per mel frame of one row through Decoder (or DVAE) + Vocos + ISTFT."""
    e = _bytes_per_element(dtype)
    stacks = [config.decoder.stack, config.dvae.decoder]
    decoder = max((s.idim + s.bn_dim + 4 * s.hidden * 2 + 4 * s.hidden) * e for s in stacks) + config.decoder.n_mels * e
    vocos = config.vocos
    n_fft = vocos.n_fft
    vocoder = (2 * 4 * vocos.dim + 4 * vocos.dim) * e + (n_fft + 2) * 4 * 3 + (n_fft // 2 + 1) * 8 * 2 + n_fft * 4 * 3
    return int(1.5 * (decoder + vocoder)) + 4 * vocos.hop_length * 3


def plan_slots(
    config: ModelConfig,
    dtype: torch.dtype,
    budget_bytes: int,
    max_prompt_tokens: int,
    max_new_tokens: int,
    prefill_chunk: int = 256,
    max_slots: int | None = None,
    decode_fraction: float = 0.1,
    persistent_step: bool = False,
) -> SlotPlan:
    """The largest slot count whose cache, buffers and activation reserve fit in `budget_bytes`.

    The reserve covers the largest of one decode step, one prefill pass (`activation_parts`) and the waveform
    decoding of finished rows, which gets `decode_fraction` of the budget but never less than one row of
    `max_new_tokens` steps. With `persistent_step` (CUDA graphs: the recorded step keeps its activations in the
    graphs' memory pool between replays) the step's memory is never free for the other two, so it is added to
    the larger of them instead.
    """
    gpt = config.gpt
    slot_tokens = max_prompt_tokens + max_new_tokens
    if slot_tokens > gpt.max_position_embeddings:
        raise ValueError(
            f"max_prompt_tokens {max_prompt_tokens} + max_new_tokens {max_new_tokens} exceeds the model's "
            f"{gpt.max_position_embeddings} positions"
        )
    kv, buffers = slot_bytes(gpt, dtype, slot_tokens, max_new_tokens)
    decode_reserve = max(
        int(budget_bytes * decode_fraction), 2 * max_new_tokens * decode_bytes_per_mel_frame(config, dtype)
    )

    def reserve(slots: int) -> int:
        step, prefill = activation_parts(gpt, dtype, slots, slot_tokens, prefill_chunk)
        if persistent_step:
            return step + max(prefill, decode_reserve) + (16 << 20)
        return max(step + (16 << 20), prefill + (16 << 20), decode_reserve)

    slots = budget_bytes // (kv + buffers)
    while slots > 0 and slots * (kv + buffers) + reserve(slots) > budget_bytes:
        slots -= 1
    if max_slots is not None:
        slots = min(slots, max_slots)
    if slots < 1:
        need = kv + buffers + reserve(1)
        raise ValueError(
            f"a budget of {budget_bytes / 2**20:.1f} MiB cannot hold one slot of {slot_tokens} tokens "
            f"(needs {need / 2**20:.1f} MiB); raise the budget or lower max_new_tokens / max_prompt_tokens"
        )
    return SlotPlan(
        slots=slots,
        slot_tokens=slot_tokens,
        max_new_tokens=max_new_tokens,
        prefill_chunk=prefill_chunk,
        kv_bytes=slots * kv,
        buffer_bytes=slots * buffers,
        reserve_bytes=reserve(slots),
        budget_bytes=budget_bytes,
        decode_bytes=decode_reserve,
    )


def default_budget_bytes(device: torch.device, fraction: float = 0.85, cpu_bytes: int = 1 << 30) -> int:
    """A fraction of the free device memory on CUDA; a fixed RAM budget on CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * fraction)
    return cpu_bytes


def step_shape(rows: int, tokens: int, plan: SlotPlan, compile: str, device_type: str) -> tuple[int, int]:
    """(pool prefix, attended cache prefix) of a decode step whose live rows end at `rows`, longest has `tokens`.

    CPU eager and inductor run the exact sizes (idle rows cost real time there; inductor's graph has dynamic
    sizes). CUDA eager rounds rows up to a multiple of 8. CUDA graphs are recorded per shape, so there rows go to
    powers of two (>= 8) and the prefix to multiples of 256: about log2(slots) x slot_tokens/256 graphs. Cache
    positions past a row's own are masked, so a longer prefix only reads entries it ignores.
    """
    slots, slot_tokens = plan.slots, plan.slot_tokens
    if compile == "cudagraphs":
        return min(slots, max(8, 1 << (rows - 1).bit_length())), min(slot_tokens, ceil_to(tokens, 256))
    if device_type == "cuda":
        return min(slots, ceil_to(rows, 8)), min(slot_tokens, tokens)
    return rows, min(slot_tokens, tokens)


def cuda_graph_shapes(plan: SlotPlan) -> list[tuple[int, int]]:
    """Every (pool prefix, attended prefix) shape `step_shape` gives under CUDA graphs: one recorded graph each."""
    rows = sorted({step_shape(r, 1, plan, "cudagraphs", "cuda")[0] for r in range(1, plan.slots + 1)})
    tokens = sorted({step_shape(1, t, plan, "cudagraphs", "cuda")[1] for t in range(1, plan.slot_tokens + 1)})
    return [(n, kv_len) for n in rows for kv_len in tokens]


def ceil_to(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)
