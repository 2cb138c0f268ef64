"""Continuous batching over a paged KV cache sized to a memory budget.

The plan (slots, KV blocks and their size, from the memory budget) is `memory.plan_slots`'. `ContinuousBatcher`
preallocates every buffer once. Rows in flight each hold a slot (their output buffers and per-row state) and the KV
blocks their context needs, taken from a shared pool as they grow (`blocks.BlockAllocator`); a row is admitted when
a slot is free and the pool has room for its prompt plus `lookahead_tokens`, and its prompt is prefilled in passes
of at most `prefill_chunk` tokens (the size the reserve covers). When the pool runs out as rows grow, the latest
admitted row is preempted: its blocks go back, its output so far is kept, and it waits at the head of the queue to
be recomputed (one prefill over prompt + its codes) and resumed, with the same codes it would have produced
uninterrupted (its random stream is counter-based: see sampling.py). When nothing is queued, rows move down into
slots freed below them (their block tables move, not their cache) so the live rows stay a prefix of the pool. A
decode step reads rows in groups of similar length, each group only up to its longest row (`_read_groups`), and
hands back rows as they finish so their slots and blocks are reused at once. Per-slot state (positions, sampling
parameters, random-stream keys, penalty windows, block tables) lives on the device; the host learns which rows
finished every `check_every` steps, not every step.

Two kinds of rows share the slots, the KV pool and every decode step (one GPT forward): code rows (the code stage:
audio codes from the code heads, next input the sum of the code embeddings) and text rows (upstream's refine-text
stage: one token from the text head, next input its text embedding, until `text_eos_id`). Text rows are sampled
over the whole text vocabulary, `plan.text_slots` rows at a time (the memory plan reserves that much); a compiled
step has one fixed shape for them, so there at most `plan.text_slots` text rows run at once, and a text row
waiting for that lane lets the code rows behind it in.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields

import torch

from ..model.chattts import ChatTTSModel
from ..model.gpt import PagedKVCache, ReadGroup
from .blocks import BlockAllocator
from .memory import COMPILE_MODES, GROUP_EFFICIENCY, SlotPlan, ceil_to, cuda_graph_shapes, step_shape
from .prompt import CodePrompt, prompt_embeddings
from .sampling import PENALTY_WINDOW, SamplingBatch, SamplingParams, penalty_counts, process_logits, sample

# The text rows of a decode step: device indexes of their slots, `plan.text_slots` at most each (None: none).
TextRows = tuple[torch.Tensor, ...] | None


@dataclass
class Resume:
    """What a preempted row had produced: restored on readmission, after its cache is recomputed."""

    codes: torch.Tensor  # [p, num_vq] int64 (a text row: its token ids, repeated in every column)
    hidden_out: torch.Tensor  # [p, H]
    recent: torch.Tensor  # [PENALTY_WINDOW, num_vq] the penalty window
    hidden: torch.Tensor  # [H] the hidden state the next step samples from

    @property
    def produced(self) -> int:
        return int(self.codes.shape[0])


@dataclass
class RowRequest:
    key: object  # caller's handle, returned with the result
    prompt: CodePrompt
    params: SamplingParams
    stream: bool = False  # report this row's progress (`ContinuousBatcher.progress`) while it runs
    text: bool = False  # a text row (refine-text stage: text head and embeddings) instead of a code row
    admitted_step: int = 0  # `stats.steps` when it entered a slot (for exact occupancy)
    admitted_order: int = 0  # admission counter: the latest admitted row is preempted first
    resume: Resume | None = None  # set while the row waits after a preemption
    base: int = 0  # frames it had produced when last admitted (0 unless resumed)

    @property
    def context(self) -> int:
        """Tokens its cache holds once (re)admitted: the prompt, plus what it produced before a preemption."""
        return self.prompt.length + (self.resume.produced if self.resume else 0)


@dataclass
class PartialRow:
    """A streaming row still generating: views of what it produced so far (consume before the next step)."""

    key: object
    codes: torch.Tensor  # [T, num_vq] int64 on the device
    hidden: torch.Tensor  # [T, H] model dtype on the device


@dataclass
class FinishedRow:
    key: object
    codes: torch.Tensor  # [T, num_vq] int64 on the device (a view into the slot's buffer: consume before refill);
    # a text row's token ids are its first column
    hidden: torch.Tensor  # [T, H] model dtype on the device (same)
    finished: bool  # ended by EOS


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


class ContinuousBatcher:
    """Rows enter free slots as others finish; one decode step advances every live row."""

    def __init__(
        self,
        model: ChatTTSModel,
        plan: SlotPlan,
        spk_emb_id: int,
        check_every: int = 1,
        compile: str = "off",
        text_eos_id: int | None = None,
    ) -> None:
        """`text_eos_id`: the token that ends a text row ([Ebreak]); None: this batcher takes code rows only."""
        if compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {list(COMPILE_MODES)}, got {compile!r}")
        if compile == "cudagraphs" and model.device.type != "cuda":
            raise ValueError(
                f"compile='cudagraphs' needs a CUDA device, the model is on {model.device}; use 'inductor'"
            )
        self._embed_prompt = prompt_embeddings
        self.model = model
        self.plan = plan
        self.spk_emb_id = spk_emb_id
        self.check_every = max(1, check_every)
        self.compile = compile
        config = model.config.gpt
        self.config = config
        device = model.device
        self.device = device
        self.dtype = model.dtype
        # A backend may run the logits chain itself (the onnx backend's sampling head); the draw is always `sample`.
        self._process_logits = getattr(model, "process_logits", process_logits)
        # A backend whose attention takes one read for all rows (the onnx layer graph) gets one group per step.
        self._grouped_reads = getattr(model, "grouped_reads", True)
        slots, max_new = plan.slots, plan.max_new_tokens
        self.cache = PagedKVCache(config, plan.pool_blocks + 1, plan.block_size, device, self.dtype)
        self.allocator = BlockAllocator(plan.pool_blocks, self.cache.zero_blocks)
        self.tables = torch.zeros(slots, plan.row_blocks, dtype=torch.int64, device=device)  # 0: the null block
        self.row_blocks: list[list[int]] = [[] for _ in range(slots)]  # host copy of each slot's table
        self.codes = torch.zeros(slots, max_new, config.num_vq, dtype=torch.int64, device=device)
        self.hidden_out = torch.zeros(slots, max_new, config.hidden_size, dtype=self.dtype, device=device)
        self.recent = torch.full((slots, PENALTY_WINDOW, config.num_vq), -1, dtype=torch.int64, device=device)
        self.hidden = torch.zeros(slots, config.hidden_size, dtype=self.dtype, device=device)
        self.position = torch.zeros(slots, dtype=torch.int64, device=device)
        self.produced = torch.zeros(slots, dtype=torch.int64, device=device)
        self.live = torch.zeros(slots, dtype=torch.bool, device=device)
        self.eos = torch.zeros(slots, dtype=torch.bool, device=device)
        self.max_new = torch.ones(slots, dtype=torch.int64, device=device)
        self.text_row = torch.zeros(slots, dtype=torch.bool, device=device)
        self.text_eos_id = text_eos_id
        self.text_slots = plan.text_slots or slots
        self.sampling = SamplingBatch.build([SamplingParams()] * slots, config.num_vq, config.num_audio_tokens, device)
        self.queue: deque[RowRequest] = deque()
        self.owner: list[RowRequest | None] = [None] * slots
        self.host_position = [0] * slots  # host mirror of positions (advances deterministically)
        self.progress: list[PartialRow] = []  # streaming rows' output so far, refreshed by every `step`
        self.stats = BatcherStats(blocks_total=plan.pool_blocks, blocks_free=plan.pool_blocks)
        self._admissions = 0
        self._group_rows: dict[tuple[int, ...], torch.Tensor] = {}  # device index tensors of recent read groups
        self._step = self._step_tensors
        if compile != "off":
            self._step = self._compiled_step()

    def _compiled_step(self) -> Callable[[int, list[ReadGroup], TextRows], None]:
        """`_step_tensors` through torch.compile with dynamic pool and prefix sizes: one graph for every bucket."""
        if self.compile == "cudagraphs":
            # The step mutates these in place; marked static, CUDA graphs replay on them instead of copying.
            static = (*self.cache.keys, *self.cache.values, self.tables, self.codes, self.hidden_out)
            for tensor in (*static, *self._row_state()):
                torch._dynamo.mark_static_address(tensor)
        return torch.compile(self._step_tensors, dynamic=True, fullgraph=True, mode=COMPILE_MODES[self.compile])

    def _row_state(self) -> tuple[torch.Tensor, ...]:
        """Every per-slot tensor indexed by slot alone (codes and hidden_out also have a time axis)."""
        sampling = (getattr(self.sampling, f.name) for f in fields(self.sampling))
        return (
            self.recent, self.hidden, self.position, self.produced, self.live, self.eos, self.max_new, self.text_row,
            *sampling,
        )  # fmt: skip

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
        self.queue.append(RowRequest(key, prompt, params, stream, text))

    def cancel(self, keys: Callable[[object], bool]) -> int:
        """Drop every queued or running row whose key matches; running rows free their slots at once."""
        dropped = [r for r in self.queue if keys(r.key)]
        if dropped:
            self.queue = deque(r for r in self.queue if not keys(r.key))
        slots = [i for i, o in enumerate(self.owner) if o is not None and keys(o.key)]
        self._release(slots)
        self.stats.cancelled += len(dropped) + len(slots)
        return len(dropped) + len(slots)

    @property
    def busy(self) -> bool:
        return bool(self.queue) or any(o is not None for o in self.owner)

    def free_slots(self) -> list[int]:
        return [i for i, o in enumerate(self.owner) if o is None]

    # ---------------------------------------------------------------------------------------------- blocks

    def _blocks_for(self, tokens: int) -> int:
        return -(-min(tokens, self.plan.slot_tokens) // self.plan.block_size)

    def _set_tables(self, slots: list[int]) -> None:
        """Copy the host block lists of `slots` to the device tables (unused entries: the null block)."""
        if not slots:
            return
        rows = torch.zeros(len(slots), self.plan.row_blocks, dtype=torch.int64)
        for i, slot in enumerate(slots):
            rows[i, : len(self.row_blocks[slot])] = torch.tensor(self.row_blocks[slot], dtype=torch.int64)
        self.tables[torch.tensor(slots, device=self.device)] = rows.to(self.device)

    def _release(self, slots: list[int]) -> None:
        """Free these slots and their blocks (finished, cancelled or preempted rows)."""
        if not slots:
            return
        self.live[torch.tensor(slots, device=self.device)] = False
        for slot in slots:
            self.allocator.give(self.row_blocks[slot])
            self.row_blocks[slot] = []
            self.owner[slot] = None
            self.host_position[slot] = 0
        self._set_tables(slots)

    def _preempt(self, slot: int) -> None:
        """Send the row in `slot` back to the head of the queue with what it produced; its blocks go back."""
        request = self.owner[slot]
        produced = self.host_position[slot] - request.prompt.length
        request.resume = Resume(
            codes=self.codes[slot, :produced].clone(),
            hidden_out=self.hidden_out[slot, :produced].clone(),
            recent=self.recent[slot].clone(),
            hidden=self.hidden[slot].clone(),
        )
        self._release([slot])
        self.queue.appendleft(request)
        self.stats.preemptions += 1

    def _reserve_ahead(self, steps: int) -> None:
        """Give every running row the blocks its next `steps` tokens go to, preempting the latest admitted rows
        while the pool is short (a row alone always fits: the plan holds at least one full row)."""
        changed = set()
        for slot in sorted(
            (i for i, o in enumerate(self.owner) if o is not None), key=lambda i: self.owner[i].admitted_order
        ):
            if self.owner[slot] is None:  # preempted for an earlier row in this loop
                continue
            need = self._blocks_for(self.host_position[slot] + steps) - len(self.row_blocks[slot])
            while need > self.allocator.free:
                victim = max(
                    (i for i, o in enumerate(self.owner) if o is not None), key=lambda i: self.owner[i].admitted_order
                )
                self._preempt(victim)
                changed.discard(victim)
                if victim == slot:
                    break
            if self.owner[slot] is not None and need > 0:
                self.row_blocks[slot] += self.allocator.take(need)
                changed.add(slot)
        self._set_tables(sorted(changed))

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
        if not any(o is not None for o in self.owner):
            return []
        read = self._plan_reads(self.check_every)
        for _ in range(self.check_every):
            self._decode_step(*read)
        finished = self._collect()
        self.stats.blocks_free = self.allocator.free
        self.stats.peak_blocks_used = self.allocator.peak_used
        return finished

    def _admit(self) -> None:
        """Queued rows, in order, into free slots while the pool has blocks for their context and look-ahead; text
        rows only while the text lane has room (the code rows behind a waiting text row go in)."""
        free = self.free_slots()
        admitted: list[tuple[int, RowRequest]] = []
        available = self.allocator.free
        text_room = self.text_slots if self.compile != "off" else len(self.owner)
        text_room -= sum(1 for o in self.owner if o is not None and o.text)
        waiting: list[RowRequest] = []  # text rows passed over for want of lane room, back at the head afterwards
        while free and self.queue:
            if self.queue[0].text and text_room <= 0:
                if len(waiting) >= len(self.owner):  # look no further than a pool's worth of waiting text rows
                    break
                waiting.append(self.queue.popleft())
                continue
            need = self._blocks_for(self.queue[0].context + self.plan.lookahead_tokens)
            if need > available:
                break
            available -= need
            request = self.queue.popleft()
            text_room -= request.text
            slot = free.pop(0)
            self.row_blocks[slot] = self.allocator.take(self._blocks_for(request.context))
            admitted.append((slot, request))
        self.queue.extendleft(reversed(waiting))
        if not admitted:
            return
        slots = [s for s, _ in admitted]
        requests = [r for _, r in admitted]
        self._set_tables(slots)
        index = torch.tensor(slots, device=self.device)
        update = SamplingBatch.build(
            [r.params for r in requests], self.config.num_vq, self.config.num_audio_tokens, self.device
        )
        for name in ("temperature", "top_p", "top_k", "penalty", "min_new_tokens", "seed_lo", "seed_hi"):
            getattr(self.sampling, name)[index] = getattr(update, name)
        self.max_new[index] = torch.tensor([r.params.max_new_tokens for r in requests], device=self.device)
        self.text_row[index] = torch.tensor([r.text for r in requests], device=self.device)
        self.produced[index] = 0
        self.eos[index] = False
        self.recent[index] = -1
        self._prefill(slots, requests)
        self.live[index] = True
        for slot, request in admitted:
            self.owner[slot] = request
            self.host_position[slot] = request.context
            request.admitted_step = self.stats.steps
            request.admitted_order = self._admissions
            self._admissions += 1
            request.base = request.resume.produced if request.resume else 0
            request.resume = None
        self.stats.admitted += len(admitted)

    def _compact(self) -> None:
        """Move the rows above the lowest free slots down into them: the live rows are again a prefix of the pool.

        A step computes every slot below its highest live row. Admission fills the lowest free slots, so holes stay
        only when nothing is queued (a job's tail, a quiet server): without this, rows that end early would leave
        the step computing idle slots until the highest row ends. A row moves with its block table, output buffers
        and state; its cache stays where it is, and its results do not change (rows are independent of their slot).
        """
        occupied = [i for i, o in enumerate(self.owner) if o is not None]
        if not occupied or occupied[-1] + 1 == len(occupied):
            return
        holes = [i for i in range(len(occupied)) if self.owner[i] is None]
        movers = [i for i in occupied if i >= len(occupied)]
        src = torch.tensor(movers, device=self.device)
        dst = torch.tensor(holes, device=self.device)
        produced = min(self.plan.max_new_tokens, max(self.host_position[i] for i in movers) + 1)
        self.codes[dst, :produced] = self.codes[src, :produced]
        self.hidden_out[dst, :produced] = self.hidden_out[src, :produced]
        for tensor in (*self._row_state(), self.tables):
            tensor[dst] = tensor[src]
        self.live[src] = False
        self.tables[src] = 0
        for old, new in zip(movers, holes, strict=True):
            self.owner[new], self.owner[old] = self.owner[old], None
            self.host_position[new], self.host_position[old] = self.host_position[old], 0
            self.row_blocks[new], self.row_blocks[old] = self.row_blocks[old], []
        self.stats.moved += len(movers)

    def _prefill(self, slots: list[int], requests: list[RowRequest]) -> None:
        """Contexts of newly admitted rows (their prompts, and for a preempted row also its codes so far), in passes
        of at most `prefill_chunk` tokens (what the plan's activation reserve covers): consecutive rows share a pass,
        right-padded to the longest, while rows x longest <= `prefill_chunk`; a longer context runs alone,
        `prefill_chunk` tokens at a time. Rows are independent (own blocks, own positions), so how they are grouped
        does not change any row's result."""
        chunk = self.plan.prefill_chunk
        group: list[tuple[int, RowRequest]] = []
        longest = 0
        # Shortest contexts first, so rows of similar length share a pass and little of it is padding.
        by_length = sorted(zip(slots, requests, strict=True), key=lambda pair: pair[1].context)
        for slot, request in by_length:
            if group and (len(group) + 1) * min(chunk, max(longest, request.context)) > chunk:
                self._prefill_group(group)
                group, longest = [], 0
            group.append((slot, request))
            longest = max(longest, request.context)
        self._prefill_group(group)

    def _context_embeddings(self, request: RowRequest) -> torch.Tensor:
        embeds = self._embed_prompt(self.model, request.prompt, self.spk_emb_id)
        if request.resume is None:
            return embeds
        if request.text:
            produced = self.model.embed.embed_text(request.resume.codes[:, 0])
        else:
            produced = self.model.embed.embed_codes(request.resume.codes)
        return torch.cat([embeds, produced.to(embeds.dtype)])

    def _prefill_group(self, rows: list[tuple[int, RowRequest]]) -> None:
        """Contexts of (slot, row) pairs, right-padded to the longest and run `prefill_chunk` tokens at a time."""
        slots = [slot for slot, _ in rows]
        requests = [request for _, request in rows]
        lengths = [r.context for r in requests]
        longest = max(lengths)
        embeds = torch.zeros(len(slots), longest, self.config.hidden_size, device=self.device, dtype=self.dtype)
        for row, request in enumerate(requests):
            embeds[row, : lengths[row]] = self._context_embeddings(request)
        slot_index = torch.tensor(slots, device=self.device)
        tables = self.tables[slot_index]
        last = torch.tensor([n - 1 for n in lengths], device=self.device)
        hidden_last = torch.zeros(len(slots), self.config.hidden_size, device=self.device, dtype=self.dtype)
        # Rows whose context is shorter than the pass's longest are padded; their writes past the row's end land in
        # the row's own look-ahead (overwritten by its decode steps before any of its queries can see them) or, past
        # its blocks, in the null block.
        for start in range(0, longest, self.plan.prefill_chunk):
            end = min(longest, start + self.plan.prefill_chunk)
            positions = torch.arange(start, end, device=self.device).unsqueeze(0).expand(len(slots), end - start)
            out = self.model.gpt(embeds[:, start:end], positions, self.cache, tables, [(None, end)])
            inside = (last >= start) & (last < end)
            if bool(inside.any()):
                picked = out[torch.arange(len(slots), device=self.device), (last - start).clamp(0, end - start - 1)]
                hidden_last = torch.where(inside.unsqueeze(-1), picked, hidden_last)
        self.hidden[slot_index] = hidden_last
        self.position[slot_index] = torch.tensor(lengths, device=self.device)
        self.stats.prefill_tokens += sum(lengths)
        for slot, request in rows:
            resume = request.resume
            if resume is None:
                continue
            # The row carries on exactly where it stopped: its outputs, penalty window and next hidden state.
            n = resume.produced
            self.codes[slot, :n] = resume.codes
            self.hidden_out[slot, :n] = resume.hidden_out
            self.recent[slot] = resume.recent
            self.hidden[slot] = resume.hidden
            self.produced[slot] = n
            self.stats.recomputed_tokens += request.context

    def _group_index(self, rows: list[int]) -> torch.Tensor:
        key = tuple(rows)
        index = self._group_rows.get(key)
        if index is None:
            if len(self._group_rows) >= 256:
                self._group_rows.clear()
            index = self._group_rows[key] = torch.tensor(rows, device=self.device)
        return index

    def _plan_reads(self, steps: int) -> tuple[int, list[ReadGroup], int, TextRows]:
        """(rows computed, read groups, keys gathered per step, text rows) for the next `steps` decode steps, made
        before them so that the steps themselves create no tensors (no host-to-device copies on CUDA).

        Slots fill from the bottom and `_compact` closes holes, so the live rows are a prefix of the pool and a step
        works on views of it. The eager step reads rows in groups of similar length, each up to its longest row at
        the block's last step; a compiled step reads all rows up to the bucketed longest (`step_shape`: fewer
        shapes, idle rows and masked positions read). Text rows are sampled from the text head by their slots'
        index, `plan.text_slots` at a time: exactly them when eager, padded (the last one repeated) to the lane's
        size when compiled, so a compiled step has one shape for them.
        """
        occupied = [i for i, o in enumerate(self.owner) if o is not None]
        size, cap = self.plan.block_size, self.plan.slot_tokens
        text_slots = [i for i in occupied if self.owner[i].text]
        if self.compile != "off" and text_slots:
            text_slots += [text_slots[-1]] * (self.text_slots - len(text_slots))
        lane = self.text_slots
        chunks = [text_slots[i : i + lane] for i in range(0, len(text_slots), lane)]
        text = tuple(self._group_index(chunk) for chunk in chunks) if chunks else None
        if self.compile == "off" and not self._grouped_reads:
            n = occupied[-1] + 1
            keys = min(cap, max(self.host_position[i] for i in occupied) + steps)
            return n, [(None, keys)], n * ceil_to(keys, size), text
        if self.compile == "off":
            n = occupied[-1] + 1
            groups = read_groups([(i, min(cap, self.host_position[i] + steps)) for i in occupied], size)
            read: list[ReadGroup] = [
                (None if len(rows) == n else self._group_index(rows), keys) for rows, keys in groups
            ]
            return n, read, sum(len(rows) * ceil_to(keys, size) for rows, keys in groups), text
        longest = max(self.host_position[i] for i in occupied) + steps
        n, kv_len = step_shape(occupied[-1] + 1, longest, self.plan, self.compile, self.device.type)
        kv_len = self._compiled_keys(kv_len)
        return n, [(None, kv_len)], n * kv_len, text

    def _decode_step(self, n: int, read: list[ReadGroup], gathered: int, text: TextRows) -> None:
        occupied = [i for i, o in enumerate(self.owner) if o is not None]
        self._step(n, read, text)
        own = 0
        for i in occupied:
            own += self.host_position[i] + 1  # the cache entries row i attended to in this step, its own included
            self.host_position[i] = min(self.host_position[i] + 1, self.plan.slot_tokens - 1)
        size = self.plan.block_size
        self.stats.own_keys += own
        self.stats.read_keys += gathered
        self.stats.held_tokens += own
        self.stats.reserved_tokens += sum(len(self.row_blocks[i]) for i in occupied) * size
        self.stats.steps += 1
        self.stats.slot_steps += self.plan.slots
        self.stats.busy_slot_steps += len(occupied)
        self.stats.computed_slot_steps += n
        self.stats.max_concurrent = max(self.stats.max_concurrent, len(occupied))
        text_rows = sum(1 for i in occupied if self.owner[i].text)
        self.stats.text_row_steps += text_rows
        self.stats.text_steps += text_rows > 0
        self.stats.shared_steps += 0 < text_rows < len(occupied)
        if len(self.stats.history) < 10_000:
            self.stats.history.append(len(occupied))

    def _compiled_keys(self, kv_len: int) -> int:
        """Keys a compiled step reads: whole blocks, at least two, so that its graph never specialises on one block
        or on a partial one (a recompile while serving)."""
        size = self.plan.block_size
        return min(max(2 * size, ceil_to(kv_len, size)), self.plan.row_blocks * size)

    def _step_tensors(self, n: int, read: list[ReadGroup], text: TextRows = None) -> None:
        """One decode step of slots [0, n) reading the cache as `read` says: sample every live row's next codes
        (text rows, the slots in `text`: their next token), record them, and run them through the GPT. Device
        tensors only (no host sync), so it compiles."""
        config = self.config
        live = (self.live & ~self.eos & (self.produced < self.max_new))[:n]
        steps = self.produced[:n]
        hidden = self.hidden[:n]
        sampling = self.sampling.prefix(n)
        logits = self.model.embed.code_logits(hidden).float()
        recent = self.recent[:n]
        if text is not None:  # text rows' windows hold text ids: no codes to count
            recent = torch.where(self.text_row[:n].view(-1, 1, 1), -1, recent)
        counts = penalty_counts(recent, config.num_audio_tokens)
        tokens = sample(self._process_logits(logits, counts, steps, sampling, config.eos_code), sampling, steps)
        hit_eos = (tokens == config.eos_code).any(-1)
        if text is not None:
            is_text = self.text_row[:n]
            # Text rows: one token from the text head; it fills every codebook column of the row's outputs.
            text_ids = torch.zeros_like(steps)
            for rows in text:  # `plan.text_slots` rows at a time: the memory plan's reserve for text sampling
                text_ids = text_ids.index_copy(0, rows, self._text_tokens(n, rows, hidden, steps, sampling))
            tokens = torch.where(is_text.unsqueeze(-1), text_ids.unsqueeze(-1).expand_as(tokens), tokens)
            hit_eos = torch.where(is_text, text_ids == self.text_eos_id, hit_eos)
        keep = live & ~hit_eos
        rows = torch.arange(n, device=self.device)
        at = steps.clamp(max=self.plan.max_new_tokens - 1)
        self.codes[rows, at] = torch.where(keep.unsqueeze(-1), tokens, self.codes[rows, at])
        self.hidden_out[rows, at] = torch.where(keep.unsqueeze(-1), hidden, self.hidden_out[rows, at])
        window = steps % PENALTY_WINDOW
        self.recent[rows, window] = torch.where(live.unsqueeze(-1), tokens, self.recent[rows, window])
        self.eos[:n] |= live & hit_eos
        self.produced[:n] += keep.long()
        # Rows that just finished idle in place until collected; their (ignored) writes go to position 0 (their own
        # first block, or the null block for an idle slot).
        if text is None:
            embeds = self.model.embed.embed_codes(tokens)
        else:
            codes_in = self.model.embed.embed_codes(torch.where(is_text.unsqueeze(-1), 0, tokens))
            text_in = self.model.embed.embed_text(torch.where(is_text, text_ids, 0))
            embeds = torch.where(is_text.unsqueeze(-1), text_in.to(codes_in.dtype), codes_in)
        embeds = embeds.to(self.dtype).unsqueeze(1)
        position = torch.where(live, self.position[:n], torch.zeros_like(steps))
        new_hidden = self.model.gpt(embeds, position.unsqueeze(1), self.cache, self.tables[:n], read)[:, 0]
        self.hidden[:n] = torch.where(live.unsqueeze(-1), new_hidden, hidden)
        self.position[:n] += live.long()

    def _text_tokens(
        self, n: int, rows: torch.Tensor, hidden: torch.Tensor, steps: torch.Tensor, sampling: SamplingBatch
    ) -> torch.Tensor:
        """The next token of the text rows `rows` [m] (slots < n): upstream's refine sampling chain over the text
        head (temperature, penalty over the row's last 16 tokens, top-p, top-k, [Ebreak] masked before
        min_new_tokens) and the same counter-based draw as code rows, so a row's tokens do not depend on its batch."""
        params = sampling.text_rows(rows)
        step = steps.index_select(0, rows)
        logits = self.model.embed.text_logits(hidden.index_select(0, rows)).float().unsqueeze(1)  # [m, 1, V]
        recent = self.recent[:n].index_select(0, rows)[:, :, :1]
        counts = penalty_counts(recent, self.config.num_text_tokens)
        scores = self._process_logits(logits, counts, step, params, self.text_eos_id)
        return sample(scores, params, step)[:, 0]

    @torch.inference_mode()
    def record_cuda_graphs(self) -> list[tuple[int, int]]:
        """Run the compiled step twice at every CUDA-graph shape (`cuda_graph_shapes`) over the idle pool, so that
        serving only replays graphs: cudagraph trees run a new shape once without recording, then record it. No row
        is live and every table points at the null block, so the step changes no row's state. Returns the shapes."""
        if self.compile != "cudagraphs":
            raise ValueError(f"only compile='cudagraphs' records CUDA graphs; this batcher runs {self.compile!r}")
        if self.busy:
            raise RuntimeError("record_cuda_graphs needs an idle pool: call it before submitting rows")
        shapes = cuda_graph_shapes(self.plan)
        for n, kv_len in shapes:
            for _ in range(2):
                self._step(n, [(None, self._compiled_keys(kv_len))], None)
        return shapes

    def _collect(self) -> list[FinishedRow]:
        done = (self.eos | (self.produced >= self.max_new)) & self.live
        # The one host sync of a `check_every` block: which rows finished, how long every row is, and whether
        # each ended by EOS, in a single transfer.
        flags, lengths, eos = (row.tolist() for row in torch.stack([done.long(), self.produced, self.eos.long()]).cpu())
        streaming = [s for s, o in enumerate(self.owner) if o is not None and o.stream and not flags[s]]
        self.progress = [
            PartialRow(self.owner[s].key, self.codes[s, : lengths[s]], self.hidden_out[s, : lengths[s]])
            for s in streaming
        ]
        if not any(flags):
            return []
        finished = []
        slots = [slot for slot, is_done in enumerate(flags) if is_done]
        for slot in slots:
            request = self.owner[slot]
            n = lengths[slot]
            finished.append(FinishedRow(request.key, self.codes[slot, :n], self.hidden_out[slot, :n], bool(eos[slot])))
            # Steps this row generated since its last admission (its frames since then, plus the step that sampled
            # EOS); with check_every > 1 it held its slot for up to check_every - 1 more steps after ending, which
            # are not busy.
            held = self.stats.steps - request.admitted_step
            generated = n - request.base
            self.stats.busy_slot_steps -= max(0, held - (generated + eos[slot]))
        self._release(slots)
        self.stats.finished += len(finished)
        return finished
