"""What a forward pass over the paged KV cache reads and writes: the one attention-metadata builder that every
backend shares (the torch layers here, the onnx layer graph in `actors.onnx.runtime`).

`attention_metadata` turns (positions, block tables, read groups) into where the call's keys and values are written
(block id and offset per token) and, per read group, which (head, block) rows of each layer's pool to gather
(`gather_index`), the gathered shape, how many keys are read and the causal mask. It is the same for every layer:
built once a call. A backend whose attention takes one read for all rows (`one_read`) gets a single read of every
row up to the furthest any group reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# A read group: (rows of the call as a device index, or None for all rows; keys the group reads).
ReadGroup = tuple[torch.Tensor | None, int]


@dataclass
class Read:
    """One read group as the layers consume it."""

    rows: torch.Tensor | None  # rows of the call, or None: all of them
    index: torch.Tensor  # (head, block) rows of a layer's pool viewed 2-D (`gather_index`)
    shape: tuple[int, int, int, int]  # gathered [kv_heads, rows, blocks x block_size, head_dim]
    keys: int  # keys read (a prefix of the gathered blocks)
    mask: torch.Tensor  # [rows, S, keys]: key position <= the query's position


@dataclass
class AttentionMetadata:
    write_blocks: torch.Tensor  # [B, S] block id of each token's key/value
    write_offsets: torch.Tensor  # [B, S] offset inside that block
    reads: list[Read]


def gather_index(table: torch.Tensor, blocks: int, heads_kv: int) -> torch.Tensor:
    """Rows of a layer's pool viewed as [kv_heads x blocks, block x head_dim] that hold the blocks of `table` [g, nb],
    head-major: index_select along that view's first dim copies whole rows, about 3x faster on CPU than selecting
    along the block dim of the 4-D pool (benchmarks/RESULTS.md). The same for every layer: computed once a call."""
    heads = torch.arange(heads_kv, device=table.device).unsqueeze(1) * blocks
    return (heads + table.reshape(1, -1)).reshape(-1)


def attention_metadata(
    positions: torch.Tensor,
    tables: torch.Tensor,
    groups: list[ReadGroup],
    pool_shape: tuple[int, int, int, int],
    one_read: bool = False,
) -> AttentionMetadata:
    """The writes and reads of a call at `positions` [B, S] of rows whose block tables are `tables` [B, nb], over a
    pool of `pool_shape` [kv_heads, blocks, block_size, head_dim]; `groups` split the rows by how far they read."""
    heads_kv, blocks, size, dim = pool_shape
    if one_read:
        groups = [(None, max(keys for _, keys in groups))]
    reads = []
    for rows, keys in groups:
        nb = max(1, -(-keys // size))
        table = tables[:, :nb] if rows is None else tables[rows, :nb]
        row_positions = positions if rows is None else positions[rows]
        key_positions = torch.arange(keys, device=positions.device)
        mask = key_positions.view(1, 1, keys) <= row_positions.unsqueeze(-1)
        shape = (heads_kv, table.shape[0], nb * size, dim)
        reads.append(Read(rows, gather_index(table, blocks, heads_kv), shape, keys, mask))
    return AttentionMetadata(tables.gather(1, positions // size), positions % size, reads)
