"""Where each running row's cache lives: the KV-block manager over the paged pool (vLLM v1's `kv_cache_manager`
room). It owns the block allocator, each slot's block list (host) and block table (device); how many blocks a row
needs for a number of tokens; and moving a row's table when the row moves to another slot."""

from __future__ import annotations

import torch

from ..model.gpt import PagedKVCache
from .blocks import BlockAllocator
from .memory import SlotPlan


class KVBlockManager:
    def __init__(self, plan: SlotPlan, cache: PagedKVCache, device: torch.device) -> None:
        self.plan = plan
        self.device = device
        self.allocator = BlockAllocator(plan.pool_blocks, cache.zero_blocks)
        self.tables = torch.zeros(plan.slots, plan.row_blocks, dtype=torch.int64, device=device)  # 0: null block
        self.row_blocks: list[list[int]] = [[] for _ in range(plan.slots)]  # host copy of each slot's table

    @property
    def free(self) -> int:
        return self.allocator.free

    def blocks_for(self, tokens: int) -> int:
        """Blocks that hold `tokens` tokens of a row (never more than a slot's)."""
        return -(-min(tokens, self.plan.slot_tokens) // self.plan.block_size)

    def missing(self, slot: int, tokens: int) -> int:
        """Blocks the row in `slot` lacks to hold `tokens` tokens."""
        return self.blocks_for(tokens) - len(self.row_blocks[slot])

    def assign(self, slot: int, tokens: int) -> None:
        """Give an admitted row in `slot` the blocks of its first `tokens` tokens (tables set by `set_tables`)."""
        self.row_blocks[slot] = self.allocator.take(self.blocks_for(tokens))

    def grow(self, slot: int, blocks: int) -> None:
        self.row_blocks[slot] += self.allocator.take(blocks)

    def set_tables(self, slots: list[int]) -> None:
        """Copy the host block lists of `slots` to the device tables (unused entries: the null block)."""
        if not slots:
            return
        rows = torch.zeros(len(slots), self.plan.row_blocks, dtype=torch.int64)
        for i, slot in enumerate(slots):
            rows[i, : len(self.row_blocks[slot])] = torch.tensor(self.row_blocks[slot], dtype=torch.int64)
        self.tables[torch.tensor(slots, device=self.device)] = rows.to(self.device)

    def release(self, slots: list[int]) -> None:
        """Give back the blocks of `slots` and point their tables at the null block."""
        for slot in slots:
            self.allocator.give(self.row_blocks[slot])
            self.row_blocks[slot] = []
        self.set_tables(slots)

    def move(self, sources: list[int], targets: list[int], src: torch.Tensor, dst: torch.Tensor) -> None:
        """Rows in `sources` move to `targets` (device indexes `src`, `dst`) with their tables; their cache stays."""
        self.tables[dst] = self.tables[src]
        self.tables[src] = 0
        for old, new in zip(sources, targets, strict=True):
            self.row_blocks[new], self.row_blocks[old] = self.row_blocks[old], []

    def held_tokens(self, slots: list[int]) -> int:
        """Tokens of the blocks the rows in `slots` hold."""
        return sum(len(self.row_blocks[i]) for i in slots) * self.plan.block_size
