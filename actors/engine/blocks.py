"""Which KV blocks are free: the host side of the paged cache (`actors.model.gpt.PagedKVCache`).

Blocks 1..capacity are handed out lowest first, so the part of the pool rows have ever used stays as small as the
rows in flight need (on CPU the untouched rest of the pool is never resident); a block is cleared the first time it
is handed out (the pool starts uninitialised, and masked reads still multiply its values by zero). Block 0 is the
null block and never handed out.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable


class BlockAllocator:
    def __init__(self, capacity: int, clear: Callable[[int, int], None]) -> None:
        """`capacity` blocks (1..capacity); `clear(start, stop)` zeroes blocks [start, stop) before first use."""
        if capacity < 1:
            raise ValueError(f"a block pool needs at least one block, got {capacity}")
        self.capacity = capacity
        self._free = list(range(1, capacity + 1))  # sorted: already a heap
        self._clear = clear
        self._cleared = 1  # blocks [0, _cleared) have been zeroed once
        self.peak_used = 0

    @property
    def free(self) -> int:
        return len(self._free)

    @property
    def used(self) -> int:
        return self.capacity - len(self._free)

    def take(self, n: int) -> list[int]:
        """The `n` lowest free blocks; ValueError when fewer are free (callers check `free` first)."""
        if n > len(self._free):
            raise ValueError(f"asked for {n} KV blocks, {len(self._free)} free of {self.capacity}")
        blocks = [heapq.heappop(self._free) for _ in range(n)]
        top = max(blocks, default=0) + 1
        if top > self._cleared:
            self._clear(self._cleared, top)
            self._cleared = top
        self.peak_used = max(self.peak_used, self.used)
        return blocks

    def give(self, blocks: list[int]) -> None:
        for block in blocks:
            heapq.heappush(self._free, block)
