"""How a decode step reads the paged cache: rows grouped by how far they read (`read_groups`), so a group gathers
only up to its longest row. The engine's runner plans a step's reads with it; the model turns them into attention
metadata (`actors.model.attention`)."""

from __future__ import annotations

from .memory import GROUP_EFFICIENCY


def read_groups(rows: list[tuple[int, int]], block_size: int) -> list[tuple[list[int], int]]:
    """(row, keys it reads) pairs -> groups of rows that each read up to their longest row, as (rows, keys): longest
    rows first, a row joins the open group while the blocks its rows own stay >= GROUP_EFFICIENCY of the blocks
    the group gathers. Every row is in exactly one group."""
    groups: list[tuple[list[int], int]] = []
    members: list[int] = []
    longest = owned = 0
    for row, keys in sorted(rows, key=lambda pair: -pair[1]):
        blocks = -(-keys // block_size)
        if members and owned + blocks < GROUP_EFFICIENCY * (len(members) + 1) * -(-longest // block_size):
            groups.append((members, longest))
            members = []
        if not members:
            longest, owned = keys, 0
        members.append(row)
        owned += blocks
    groups.append((members, longest))
    return groups
