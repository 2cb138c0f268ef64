"""Exactly-once bookkeeping: which input rows earlier runs already finished (by key, in Arrow), and which rows of
each parsed block are still to do."""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.compute as pc

from .parts import drop_failed_rows, key_array, read_outputs

log = logging.getLogger(__name__)


def finished_keys(output: str, retry_failed: bool, duplicates: pa.Array | None = None) -> pa.Array:
    """Keys (`key_array`, with this input's `duplicates` sources) of rows earlier runs already wrote, as one Arrow
    array: a million keys stay ~30 MB, not a Python set of string objects. With `retry_failed`, failed rows are
    first removed from their parts (so the redone rows do not appear twice) and are not counted as finished."""
    table = read_outputs(output, ["id", "source", "error"], clean=True)
    if retry_failed and table.column("error").null_count != table.num_rows:
        log.info("retry_failed: removed %d failed rows from earlier parts to redo them", drop_failed_rows(output))
        table = read_outputs(output, ["id", "source", "error"], clean=True)
    return pc.unique(key_array(table.column("id"), table.column("source"), duplicates))


def unfinished_plan(sizes: list[int], done: pa.ChunkedArray) -> list[tuple[int, pa.Array | None]]:
    """(block index, rows to keep) for the blocks that still have work: `None` keeps a block whole (none of its rows
    is finished), a mask keeps its unfinished rows; a block whose rows are all finished is left out. `done` holds
    one flag per row of the blocks in order (`sizes` rows each)."""
    plan: list[tuple[int, pa.Array | None]] = []
    offset = 0
    for index, size in enumerate(sizes):
        flags = done.slice(offset, size)
        offset += size
        finished = pc.sum(flags).as_py() or 0
        if finished == 0 and size:
            plan.append((index, None))
        elif finished < size:
            plan.append((index, pc.invert(flags).combine_chunks()))
    return plan


def keep_rows(block: pa.Table, mask: pa.Array) -> pa.Table:
    return block.filter(mask)
