"""Who runs next: the queue of rows, the slots they own, admission (with the refine-text lane) and the preemption
policy (vLLM v1's `scheduler` room). The scheduler decides; the KV-block manager (`kv_blocks`) says what room there
is, and the engine core (`batcher`) carries out preemptions and moves on the device."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Protocol

from .kv_blocks import KVBlockManager
from .memory import SlotPlan
from .rows import RowRequest


class PreemptionPolicy(Protocol):
    """Which running row gives its blocks back when the pool runs short."""

    def victim(self, running: dict[int, RowRequest]) -> int:
        """The slot to preempt among `running` (slot -> row)."""
        ...


class LatestAdmittedFirst:
    """The row admitted last: it has produced least since its admission, so recomputing it costs least, and rows
    admitted earlier keep their progress (no row can be preempted forever: it is readmitted first)."""

    def victim(self, running: dict[int, RowRequest]) -> int:
        return max(running, key=lambda slot: running[slot].admitted_order)


class Scheduler:
    def __init__(self, plan: SlotPlan, text_slots: int, policy: PreemptionPolicy | None = None) -> None:
        self.plan = plan
        self.text_slots = text_slots
        self.policy = policy or LatestAdmittedFirst()
        self.queue: deque[RowRequest] = deque()
        self.owner: list[RowRequest | None] = [None] * plan.slots
        self.host_position = [0] * plan.slots  # host mirror of each slot's position (advances deterministically)
        self._admissions = 0

    @property
    def busy(self) -> bool:
        return bool(self.queue) or any(o is not None for o in self.owner)

    def free_slots(self) -> list[int]:
        return [i for i, o in enumerate(self.owner) if o is None]

    def occupied(self) -> list[int]:
        return [i for i, o in enumerate(self.owner) if o is not None]

    def running(self) -> dict[int, RowRequest]:
        return {i: o for i, o in enumerate(self.owner) if o is not None}

    def by_admission(self) -> list[int]:
        """Occupied slots, earliest admitted first."""
        return sorted(self.occupied(), key=lambda i: self.owner[i].admitted_order)

    def cancel(self, keys: Callable[[object], bool]) -> tuple[int, list[int]]:
        """Drop queued rows whose key matches; returns (how many, the running slots whose rows match)."""
        dropped = sum(1 for r in self.queue if keys(r.key))
        if dropped:
            self.queue = deque(r for r in self.queue if not keys(r.key))
        return dropped, [i for i, o in enumerate(self.owner) if o is not None and keys(o.key)]

    def admit(self, kv: KVBlockManager, compiled: bool) -> list[tuple[int, RowRequest]]:
        """Queued rows, in order, into free slots while the pool has blocks for their context and look-ahead (their
        context's blocks are taken); text rows only while the text lane has room (a compiled step has one shape for
        it), and the code rows behind a waiting text row go in."""
        free = self.free_slots()
        admitted: list[tuple[int, RowRequest]] = []
        available = kv.free
        text_room = self.text_slots if compiled else len(self.owner)
        text_room -= sum(1 for o in self.owner if o is not None and o.text)
        waiting: list[RowRequest] = []  # text rows passed over for want of lane room, back at the head afterwards
        while free and self.queue:
            if self.queue[0].text and text_room <= 0:
                if len(waiting) >= len(self.owner):  # look no further than a pool's worth of waiting text rows
                    break
                waiting.append(self.queue.popleft())
                continue
            need = kv.blocks_for(self.queue[0].context + self.plan.lookahead_tokens)
            if need > available:
                break
            available -= need
            request = self.queue.popleft()
            text_room -= request.text
            slot = free.pop(0)
            kv.assign(slot, request.context)
            admitted.append((slot, request))
        self.queue.extendleft(reversed(waiting))
        return admitted

    def start(self, admitted: list[tuple[int, RowRequest]], step: int) -> None:
        """The admitted rows own their slots from `step` on (their contexts are prefilled)."""
        for slot, request in admitted:
            self.owner[slot] = request
            self.host_position[slot] = request.context
            request.admitted_step = step
            request.admitted_order = self._admissions
            self._admissions += 1
            request.base = request.resume.produced if request.resume else 0
            request.resume = None

    def vacate(self, slots: list[int]) -> None:
        for slot in slots:
            self.owner[slot] = None
            self.host_position[slot] = 0

    def requeue(self, request: RowRequest) -> None:
        """A preempted row waits at the head of the queue."""
        self.queue.appendleft(request)

    def compaction(self) -> tuple[list[int], list[int]] | None:
        """(rows to move, the lowest free slots they go to) so the live rows are again a prefix of the pool, or None
        when they already are. Admission fills the lowest free slots, so holes stay only when nothing is queued."""
        occupied = self.occupied()
        if not occupied or occupied[-1] + 1 == len(occupied):
            return None
        holes = [i for i in range(len(occupied)) if self.owner[i] is None]
        return [i for i in occupied if i >= len(occupied)], holes

    def move(self, movers: list[int], holes: list[int]) -> None:
        for old, new in zip(movers, holes, strict=True):
            self.owner[new], self.owner[old] = self.owner[old], None
            self.host_position[new], self.host_position[old] = self.host_position[old], 0
