"""What happened in an engine: step, slot, prefill, preemption, attention-read and KV-block counters
(`BatcherStats`), and their plain-number form for reports (`accounting`)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class BatcherStats:
    steps: int = 0
    slot_steps: int = 0  # sum over steps of pool size
    busy_slot_steps: int = 0  # sum over steps of slots holding a generating row (not one that has ended)
    prefill_tokens: int = 0
    admitted: int = 0
    finished: int = 0
    max_concurrent: int = 0
    cancelled: int = 0
    computed_slot_steps: int = 0  # sum over steps of the rows the step computed (live rows + idle ones below them)
    moved: int = 0  # rows moved down into free slots (compaction)
    preemptions: int = 0  # rows sent back to the queue when the pool ran out of blocks
    recomputed_tokens: int = 0  # cache tokens prefilled again for preempted rows
    # Attention and KV accounting, summed over decode steps: the keys the rows own (each row's context), the keys the
    # step read (the blocks its read groups gathered), and the KV tokens rows held vs the tokens of their blocks.
    own_keys: int = 0
    read_keys: int = 0
    held_tokens: int = 0
    reserved_tokens: int = 0
    blocks_total: int = 0  # KV blocks in the pool
    blocks_free: int = 0  # free after the last step
    peak_blocks_used: int = 0
    # Refine-text rows: row-steps they took, steps that had any, steps they shared with code rows
    text_row_steps: int = 0
    text_steps: int = 0
    shared_steps: int = 0
    history: list[int] = field(default_factory=list)  # live rows per step (kept short: last 10k steps)

    @property
    def occupancy(self) -> float:
        return self.busy_slot_steps / self.slot_steps if self.slot_steps else 0.0

    @property
    def attention_read_efficiency(self) -> float:
        """(sum of rows' own context) / (keys the decode steps read): 1.0 when every row reads only its own cache."""
        return self.own_keys / self.read_keys if self.read_keys else 0.0

    @property
    def kv_held_share(self) -> float:
        """KV tokens rows actually held / tokens of the blocks they held, over the steps (1.0: nothing unused)."""
        return self.held_tokens / self.reserved_tokens if self.reserved_tokens else 0.0

    def record_step(
        self, rows: int, computed: int, slots: int, own: int, gathered: int, reserved: int, text_rows: int
    ) -> None:
        """One decode step: `rows` live of `slots` (`computed` computed), the keys they own and the step gathered,
        the tokens of their blocks, and how many were text rows."""
        self.own_keys += own
        self.read_keys += gathered
        self.held_tokens += own
        self.reserved_tokens += reserved
        self.steps += 1
        self.slot_steps += slots
        self.busy_slot_steps += rows
        self.computed_slot_steps += computed
        self.max_concurrent = max(self.max_concurrent, rows)
        self.text_row_steps += text_rows
        self.text_steps += text_rows > 0
        self.shared_steps += 0 < text_rows < rows
        if len(self.history) < 10_000:
            self.history.append(rows)

    def accounting(self) -> dict[str, float | int]:
        """The KV and attention accounting as plain numbers (job and synth reports, /v1/stats, benchmarks)."""
        return {
            "steps": self.steps,
            "max_rows_in_flight": self.max_concurrent,
            "occupancy": round(self.occupancy, 4),
            "attention_read_efficiency": round(self.attention_read_efficiency, 4),
            "kv_held_share": round(self.kv_held_share, 4),
            "blocks_total": self.blocks_total,
            "blocks_free": self.blocks_free,
            "peak_blocks_used": self.peak_blocks_used,
            "preemptions": self.preemptions,
            "recomputed_tokens": self.recomputed_tokens,
            "text_row_steps": self.text_row_steps,
            "text_steps": self.text_steps,
            "shared_steps": self.shared_steps,
        }
