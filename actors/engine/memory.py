"""Memory planning of the engine: how a byte budget becomes slots and KV blocks, and the shapes a step runs at.

`plan_slots` turns a byte budget into a slot count (rows in flight, each with its own output buffers) and a pool
of KV blocks the rows share as they grow, from the model's own KV bytes per token and the activation reserve (the
largest of one decode step, one prefill pass and the waveform decode). `step_shape` gives the (rows, cache prefix)
a padded step computes on each device and compile mode. Pure arithmetic over configs and dtypes: nothing here
allocates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..model.config import GPTConfig, ModelConfig
from .sampling import PENALTY_WINDOW

# Engine `compile` setting -> torch.compile mode ("off" runs the step eagerly).
COMPILE_MODES = {"off": None, "inductor": "default", "cudagraphs": "reduce-overhead"}
BLOCK_SIZE = 8  # tokens per KV block, the unit rows grow by (8 vs 16: read efficiency 0.94 vs 0.91 on CPU, RESULTS.md)
LOOKAHEAD_TOKENS = 32  # a row is admitted only with room to grow this far past its prompt (fewer preemptions)
# Rows are planned at this share of their `slot_tokens` to size the slot count (rows in flight); the KV pool holds
# what the budget leaves, so rows that grow longer are held by fewer slots, never over the budget.
PLANNED_ROW_SHARE = 0.2
# Decode reads rows in groups whose own blocks are at least this share of what the group gathers (see
# `batcher.read_groups`): the reserve bounds a step's gathered keys by the pool / this.
GROUP_EFFICIENCY = 0.95
# Refine-text rows (text head over the whole vocabulary: ~8x a code row's sampling memory) may take at most this
# share of the slots at once. A refine row runs ~1/5 of the steps of the code row it becomes (its text vs its audio
# frames), so a quarter of the slots keeps the code rows fed.
TEXT_SHARE = 0.25


def text_slots_for(slots: int) -> int:
    """Refine-text rows in flight at most, for a pool of `slots`."""
    return max(1, math.ceil(slots * TEXT_SHARE))


@dataclass(frozen=True)
class SlotPlan:
    """How a byte budget is spent: a pool of `blocks` KV blocks of `block_size` tokens shared by up to `slots` rows
    in flight (each with its own output buffers, at most `slot_tokens` tokens), plus a fixed activation reserve."""

    slots: int
    slot_tokens: int
    max_new_tokens: int
    prefill_chunk: int
    kv_bytes: int
    buffer_bytes: int
    reserve_bytes: int
    budget_bytes: int
    decode_bytes: int = 0  # transient bytes allowed for decoding finished rows to waveforms
    block_size: int = BLOCK_SIZE
    blocks: int = 0  # KV blocks rows can hold (the null block not counted); 0: one full row per slot
    lookahead_tokens: int = LOOKAHEAD_TOKENS  # growth room a row must find free to be admitted
    text_slots: int = 0  # refine-text rows in flight at most (their sampling is in the reserve); 0: every slot

    @property
    def planned_bytes(self) -> int:
        return self.kv_bytes + self.buffer_bytes + self.reserve_bytes

    @property
    def row_blocks(self) -> int:
        """Blocks one row holds at most (`slot_tokens` tokens)."""
        return -(-self.slot_tokens // self.block_size)

    @property
    def pool_blocks(self) -> int:
        """Blocks rows share: `blocks`, or (a plan without a byte budget) one full row for every slot."""
        return self.blocks or self.slots * self.row_blocks


def _bytes_per_element(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def slot_bytes(
    config: GPTConfig, dtype: torch.dtype, slot_tokens: int, max_new_tokens: int, block_size: int = BLOCK_SIZE
) -> tuple[int, int]:
    """(KV-cache bytes of a full row, other per-slot buffer bytes): the per-slot tensors `ContinuousBatcher`
    preallocates, and the KV a row of `slot_tokens` tokens holds in the shared pool."""
    e = _bytes_per_element(dtype)
    kv = config.kv_bytes_per_token(e) * slot_tokens
    # outputs (codes, hidden_out), the penalty window, and the hidden state the next step samples from
    hidden = (max_new_tokens + 1) * config.hidden_size * e
    codes = max_new_tokens * config.num_vq * 8 + PENALTY_WINDOW * config.num_vq * 8
    table = -(-slot_tokens // block_size) * 8  # the row's block table (int64)
    # positions, counters, flags and sampling parameters (< 100 bytes)
    return kv, hidden + codes + table + 256


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
    # per (row, key): the keys and values gathered from the rows' blocks (with GQA also expanded to every head)
    kv = (2 * kv_dim + (2 * h if kv_dim < h else 0)) * e
    return queries * token + query_keys * score + row_keys * kv


def activation_parts(
    config: GPTConfig,
    dtype: torch.dtype,
    slots: int,
    slot_tokens: int,
    prefill_chunk: int,
    decode_keys: int | None = None,
    text_rows: int = 0,
) -> tuple[int, int]:
    """(one decode step over `slots` with sampling, one prefill pass): upper estimates of their transient bytes.

    `text_rows` of the step are refine-text rows, also sampled over the whole text vocabulary.

    A decode step gathers at most `decode_keys` cache positions over all its read groups (default: every slot up
    to `slot_tokens`, what one padded group can read).

    A prefill pass runs at most `prefill_chunk` query tokens over all its rows (see `ContinuousBatcher._prefill`):
    rows x their longest prompt <= `prefill_chunk`, or one row whose prompt is longer, a chunk at a time. So a
    pass holds at most max(prefill_chunk, slot_tokens) row x cache positions and prompt embeddings. Compaction
    (`ContinuousBatcher._compact`) moves block tables and output buffers, no cache entries.
    """
    e = _bytes_per_element(dtype)
    h, num_vq = config.hidden_size, config.num_vq
    kv_dim = config.num_key_value_heads * config.head_dim
    codes = num_vq * config.num_audio_tokens
    keys = slots * slot_tokens if decode_keys is None else decode_keys
    decode = forward_bytes(config, dtype, slots, keys, keys)
    # sampling in fp32/fp64: logits, scaled, sorted values+indices, cumsum, masks, uniforms, probabilities; the
    # sampled codes' embeddings (one per codebook, stacked, summed)
    sampling = slots * (codes * (4 * 8 + 8 * 6) + (num_vq + 2) * h * e)
    # refine rows: the text head's logits in the model dtype, and the same sampling temporaries over the vocabulary
    sampling += text_rows * (config.num_text_tokens * (e + 4 * 8 + 8 * 6) + 2 * h * e)
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


def _slot_tokens(gpt: GPTConfig, max_prompt_tokens: int, max_new_tokens: int) -> int:
    if max_prompt_tokens + max_new_tokens > gpt.max_position_embeddings:
        raise ValueError(
            f"max_prompt_tokens {max_prompt_tokens} + max_new_tokens {max_new_tokens} exceeds the model's "
            f"{gpt.max_position_embeddings} positions"
        )
    return max_prompt_tokens + max_new_tokens


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
    exact_reads: bool = True,
    planned_row_share: float = PLANNED_ROW_SHARE,
    block_size: int = BLOCK_SIZE,
) -> SlotPlan:
    """Slots (rows in flight) and KV blocks whose buffers, pool and activation reserve fit in `budget_bytes`.

    Rows hold blocks as they grow, so the slot count is planned for rows at `planned_row_share` of their
    `slot_tokens` (1.0: every row reserves its maximum, the pre-paging plan), and the pool gets what the budget
    leaves, at most a full row for every slot and at least one full row. The reserve covers the largest of one
    decode step, one prefill pass (`activation_parts`) and the waveform decoding of finished rows, which gets
    `decode_fraction` of the budget but never less than one row of `max_new_tokens` steps. A decode step gathers at
    most the pool / GROUP_EFFICIENCY keys when it reads rows in groups (`exact_reads`, the eager step); a compiled
    step reads every slot up to the bucketed longest row. With `persistent_step` (CUDA graphs: the recorded step
    keeps its activations in the graphs' memory pool between replays) the step's memory is never free for the
    other two, so it is added to the larger of them instead.
    """
    gpt = config.gpt
    slot_tokens = _slot_tokens(gpt, max_prompt_tokens, max_new_tokens)
    block_bytes = gpt.kv_bytes_per_token(_bytes_per_element(dtype)) * block_size
    _, buffers = slot_bytes(gpt, dtype, slot_tokens, max_new_tokens, block_size)
    row_blocks = -(-slot_tokens // block_size)
    planned_blocks = max(1, math.ceil(row_blocks * planned_row_share))
    decode_reserve = max(
        int(budget_bytes * decode_fraction), 2 * max_new_tokens * decode_bytes_per_mel_frame(config, dtype)
    )

    def reserve(slots: int, blocks: int) -> int:
        keys = slots * slot_tokens
        if exact_reads and not persistent_step:
            keys = min(keys, math.ceil(blocks * block_size / GROUP_EFFICIENCY) + slots * block_size)
        step, prefill = activation_parts(gpt, dtype, slots, slot_tokens, prefill_chunk, keys, text_slots_for(slots))
        if persistent_step:
            return step + max(prefill, decode_reserve) + (16 << 20)
        return max(step + (16 << 20), prefill + (16 << 20), decode_reserve)

    def planned(slots: int, blocks: int) -> int:  # the null block included
        return (blocks + 1) * block_bytes + slots * buffers + reserve(slots, blocks)

    slots = budget_bytes // (buffers + planned_blocks * block_bytes)
    if max_slots is not None:
        slots = min(slots, max_slots)
    while slots > 0 and planned(slots, max(row_blocks, slots * planned_blocks)) > budget_bytes:
        slots -= 1
    if slots < 1:
        need = planned(1, row_blocks)
        raise ValueError(
            f"a budget of {budget_bytes / 2**20:.1f} MiB cannot hold one slot of {slot_tokens} tokens "
            f"(needs {need / 2**20:.1f} MiB); raise the budget or lower max_new_tokens / max_prompt_tokens"
        )
    blocks = min(slots * row_blocks, budget_bytes // block_bytes)
    while planned(slots, blocks) > budget_bytes:  # converges: the reserve shrinks with the pool
        over = planned(slots, blocks) - budget_bytes
        blocks = max(max(row_blocks, slots * planned_blocks), blocks - max(1, -(-over // block_bytes)))
    return SlotPlan(
        slots=slots,
        slot_tokens=slot_tokens,
        max_new_tokens=max_new_tokens,
        prefill_chunk=prefill_chunk,
        kv_bytes=(blocks + 1) * block_bytes,
        buffer_bytes=slots * buffers,
        reserve_bytes=reserve(slots, blocks),
        budget_bytes=budget_bytes,
        decode_bytes=decode_reserve,
        block_size=block_size,
        blocks=blocks,
        text_slots=text_slots_for(slots),
    )


def default_budget_bytes(device: torch.device, fraction: float = 0.85) -> int:
    """A fraction of the free memory of a CUDA device (CPU budgets: `actors.placement.cpu_budget_bytes`)."""
    if device.type != "cuda":
        raise ValueError(f"default_budget_bytes reads a CUDA device's free memory; got {device}")
    free, _ = torch.cuda.mem_get_info(device)
    return int(free * fraction)


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
