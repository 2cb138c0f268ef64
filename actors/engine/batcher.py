"""Continuous batching over a paged KV cache sized to a memory budget: the engine core.

The engine is split the way serving engines are (vLLM v1): the scheduler decides who runs (`scheduler`: queue,
admission, the refine-text lane, the preemption policy), the KV-block manager owns where their cache lives
(`kv_blocks`), the model runner owns the device state and runs steps (`runner`), the counters are `stats`; this core
only steps them. The plan (slots, KV blocks and their size, from the memory budget) is `memory.plan_slots`'.

Rows in flight each hold a slot (their output buffers and per-row state) and the KV blocks their context needs,
taken from a shared pool as they grow; a row is admitted when a slot is free and the pool has room for its prompt
plus `lookahead_tokens`, and its prompt is prefilled in passes of at most `prefill_chunk` tokens. When the pool runs
out as rows grow, the policy's victim is preempted: its blocks go back, its output so far is kept, and it waits at
the head of the queue to be recomputed (one prefill over prompt + its codes) and resumed, with the same codes it
would have produced uninterrupted (its random stream is counter-based: see sampling.py). When nothing is queued,
rows move down into slots freed below them (their block tables move, not their cache) so the live rows stay a
prefix of the pool. A decode step reads rows in groups of similar length (`reads.read_groups`) and hands back rows
as they finish so their slots and blocks are reused at once; the host learns which rows finished every
`check_every` steps, not every step.

Two kinds of rows share the slots, the KV pool and every decode step (one GPT forward): code rows (audio codes from
the code heads) and text rows (upstream's refine-text stage: one token from the text head until `text_eos_id`),
sampled `plan.text_slots` rows at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from ..model.chattts import ChatTTSModel
from ..model.gpt import PagedKVCache
from .backend import ModelBackend, as_backend
from .kv_blocks import KVBlockManager
from .memory import COMPILE_MODES, SlotPlan
from .reads import read_groups
from .rows import FinishedRow, PartialRow, Resume, RowRequest
from .runner import ModelRunner, StepReads
from .sampling import SamplingParams
from .scheduler import PreemptionPolicy, Scheduler
from .stats import BatcherStats

__all__ = [
    "BatcherStats", "ContinuousBatcher", "FinishedRow", "PartialRow", "Resume", "RowRequest", "read_groups",
]  # fmt: skip


class ContinuousBatcher:
    """Rows enter free slots as others finish; one decode step advances every live row."""

    def __init__(
        self,
        model: ChatTTSModel | ModelBackend,
        plan: SlotPlan,
        spk_emb_id: int,
        check_every: int = 1,
        compile: str = "off",
        text_eos_id: int | None = None,
        policy: PreemptionPolicy | None = None,
    ) -> None:
        """`text_eos_id`: the token that ends a text row ([Ebreak]); None: this batcher takes code rows only."""
        if compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {list(COMPILE_MODES)}, got {compile!r}")
        backend = as_backend(model)
        if compile == "cudagraphs" and backend.device.type != "cuda":
            raise ValueError(
                f"compile='cudagraphs' needs a CUDA device, the model is on {backend.device}; use 'inductor'"
            )
        self.backend = backend
        self.plan = plan
        self.check_every = max(1, check_every)
        self.compile = compile
        self.text_eos_id = text_eos_id
        self.device = backend.device
        self.cache = PagedKVCache(backend.config.gpt, plan.pool_blocks + 1, plan.block_size, self.device, backend.dtype)
        self.kv = KVBlockManager(plan, self.cache, self.device)
        self.runner = ModelRunner(backend, plan, self.cache, self.kv.tables, spk_emb_id, compile, text_eos_id)
        self.scheduler = Scheduler(plan, self.runner.text_slots, policy)
        self.progress: list[PartialRow] = []  # streaming rows' output so far, refreshed by every `step`
        self.stats = BatcherStats(blocks_total=plan.pool_blocks, blocks_free=plan.pool_blocks)

    # ---------------------------------------------------------------------------------------------- intake

    def submit(self, key: object, prompt, params: SamplingParams, stream: bool = False, text: bool = False) -> None:
        """Queue a row: a code row, or with `text` a text row (refine-text stage; never streamed)."""
        if text and self.text_eos_id is None:
            raise ValueError("this batcher has no text_eos_id: it runs code rows only")
        if text and stream:
            raise ValueError("text rows are not streamed")
        if prompt.length < 1:
            raise ValueError("every prompt needs at least one token")
        if prompt.length + params.max_new_tokens > self.plan.slot_tokens:
            raise ValueError(
                f"prompt of {prompt.length} tokens + max_new_tokens {params.max_new_tokens} does not fit a slot of "
                f"{self.plan.slot_tokens} tokens"
            )
        if params.max_new_tokens > self.plan.max_new_tokens:
            raise ValueError(f"max_new_tokens {params.max_new_tokens} exceeds this engine's {self.plan.max_new_tokens}")
        self.scheduler.queue.append(RowRequest(key, prompt, params, stream, text))

    def cancel(self, keys: Callable[[object], bool]) -> int:
        """Drop every queued or running row whose key matches; running rows free their slots at once."""
        dropped, slots = self.scheduler.cancel(keys)
        self._release(slots)
        self.stats.cancelled += dropped + len(slots)
        return dropped + len(slots)

    @property
    def busy(self) -> bool:
        return self.scheduler.busy

    @property
    def queued_rows(self) -> int:
        return len(self.scheduler.queue)

    @property
    def running_rows(self) -> int:
        return len(self.scheduler.occupied())

    def free_slots(self) -> list[int]:
        return self.scheduler.free_slots()

    # ---------------------------------------------------------------------------------------------- steps

    def run(self) -> Iterator[FinishedRow]:
        """Drive until the queue is empty and every slot is idle, yielding rows as they finish."""
        while self.busy:
            yield from self.step()

    @torch.inference_mode()
    def step(self) -> list[FinishedRow]:
        """Admit what fits, give running rows blocks for the next `check_every` decode steps, run them; return the
        rows that finished."""
        self._admit()
        self._reserve_ahead(self.check_every)
        self._compact()
        self.progress = []
        if not self.scheduler.occupied():
            return []
        read = self._plan_reads(self.check_every)
        for _ in range(self.check_every):
            self._decode_step(*read)
        finished = self._collect()
        self.stats.blocks_free = self.kv.free
        self.stats.peak_blocks_used = self.kv.allocator.peak_used
        return finished

    def _admit(self) -> None:
        admitted = self.scheduler.admit(self.kv, compiled=self.compile != "off")
        if not admitted:
            return
        slots = [s for s, _ in admitted]
        requests = [r for _, r in admitted]
        self.kv.set_tables(slots)
        index = self.runner.load(slots, requests)
        self.stats.prefill_tokens += self.runner.prefill(slots, requests)
        self.stats.recomputed_tokens += sum(r.context for r in requests if r.resume is not None)
        self.runner.live[index] = True
        self.scheduler.start(admitted, self.stats.steps)
        self.stats.admitted += len(admitted)

    def _release(self, slots: list[int]) -> None:
        """Free these slots and their blocks (finished, cancelled or preempted rows)."""
        if not slots:
            return
        self.runner.stop(slots)
        self.kv.release(slots)
        self.scheduler.vacate(slots)

    def _preempt(self, slot: int) -> None:
        """Send the row in `slot` back to the head of the queue with what it produced; its blocks go back."""
        request = self.scheduler.owner[slot]
        request.resume = self.runner.snapshot(slot, self.scheduler.host_position[slot] - request.prompt.length)
        self._release([slot])
        self.scheduler.requeue(request)
        self.stats.preemptions += 1

    def _reserve_ahead(self, steps: int) -> None:
        """Give every running row the blocks its next `steps` tokens go to, earliest admitted first, preempting the
        policy's victims while the pool is short (a row alone always fits: the plan holds at least one full row)."""
        changed = set()
        owner, positions = self.scheduler.owner, self.scheduler.host_position
        for slot in self.scheduler.by_admission():
            if owner[slot] is None:  # preempted for an earlier row in this loop
                continue
            need = self.kv.missing(slot, positions[slot] + steps)
            while need > self.kv.free:
                victim = self.scheduler.policy.victim(self.scheduler.running())
                self._preempt(victim)
                changed.discard(victim)
                if victim == slot:
                    break
            if owner[slot] is not None and need > 0:
                self.kv.grow(slot, need)
                changed.add(slot)
        self.kv.set_tables(sorted(changed))

    def _compact(self) -> None:
        """Move the rows above the lowest free slots down into them: the live rows are again a prefix of the pool.

        A step computes every slot below its highest live row; without this, rows that end early would leave the
        step computing idle slots until the highest row ends. A row moves with its block table, output buffers and
        state; its cache stays where it is, and its results do not change (rows are independent of their slot)."""
        moves = self.scheduler.compaction()
        if moves is None:
            return
        movers, holes = moves
        src = torch.tensor(movers, device=self.device)
        dst = torch.tensor(holes, device=self.device)
        frames = min(self.plan.max_new_tokens, max(self.scheduler.host_position[i] for i in movers) + 1)
        self.runner.move(src, dst, frames)
        self.kv.move(movers, holes, src, dst)
        self.scheduler.move(movers, holes)
        self.stats.moved += len(movers)

    def _plan_reads(self, steps: int) -> StepReads:
        occupied = self.scheduler.occupied()
        positions = {i: self.scheduler.host_position[i] for i in occupied}
        text = [i for i in occupied if self.scheduler.owner[i].text]
        return self.runner.plan_reads(positions, text, steps)

    def _decode_step(self, n: int, read: list, gathered: int, text: object) -> None:
        occupied = self.scheduler.occupied()
        self.runner.step(n, read, text)
        positions = self.scheduler.host_position
        own = 0
        for i in occupied:
            own += positions[i] + 1  # the cache entries row i attended to in this step, its own included
            positions[i] = min(positions[i] + 1, self.plan.slot_tokens - 1)
        text_rows = sum(1 for i in occupied if self.scheduler.owner[i].text)
        self.stats.record_step(
            rows=len(occupied), computed=n, slots=self.plan.slots, own=own, gathered=gathered,
            reserved=self.kv.held_tokens(occupied), text_rows=text_rows,
        )  # fmt: skip

    @torch.inference_mode()
    def record_cuda_graphs(self) -> list[tuple[int, int]]:
        """Record the compiled step at every CUDA-graph shape over the idle pool (`ModelRunner.record_cuda_graphs`),
        so that serving only replays graphs. Returns the shapes."""
        if self.compile != "cudagraphs":
            raise ValueError(f"only compile='cudagraphs' records CUDA graphs; this batcher runs {self.compile!r}")
        if self.busy:
            raise RuntimeError("record_cuda_graphs needs an idle pool: call it before submitting rows")
        return self.runner.record_cuda_graphs()

    def _collect(self) -> list[FinishedRow]:
        flags, lengths, eos = self.runner.finished_flags()
        owner = self.scheduler.owner
        streaming = [s for s, o in enumerate(owner) if o is not None and o.stream and not flags[s]]
        codes, hidden_out = self.runner.codes, self.runner.hidden_out
        self.progress = [
            PartialRow(owner[s].key, codes[s, : lengths[s]], hidden_out[s, : lengths[s]]) for s in streaming
        ]
        if not any(flags):
            return []
        finished = []
        slots = [slot for slot, is_done in enumerate(flags) if is_done]
        for slot in slots:
            request = owner[slot]
            n = lengths[slot]
            finished.append(FinishedRow(request.key, codes[slot, :n], hidden_out[slot, :n], bool(eos[slot])))
            # Steps this row generated since its last admission (its frames since then, plus the step that sampled
            # EOS); with check_every > 1 it held its slot for up to check_every - 1 more steps after ending, which
            # are not busy.
            held = self.stats.steps - request.admitted_step
            generated = n - request.base
            self.stats.busy_slot_steps -= max(0, held - (generated + eos[slot]))
        self._release(slots)
        self.stats.finished += len(finished)
        return finished
