"""Continuous batching over a fixed pool of KV-cache slots sized to a memory budget.

The plan (slots and their size, from the memory budget) is `memory.plan_slots`'. `ContinuousBatcher` preallocates
every buffer once, admits queued rows into the lowest free slots (prefilling their prompts in passes of at most `prefill_chunk`
tokens, the size the reserve covers), moves rows down into slots freed below them when nothing is queued (so the
live rows stay a prefix of the pool), runs one decode step over that prefix (views, never gathered; idle rows inside
a shape bucket are masked), and hands back rows as they finish so their slots refill at once. Per-slot state
(positions, sampling parameters, random-stream keys, penalty windows) lives on the device; the host learns which
rows finished every `check_every` steps, not every step.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields

import torch

from ..model.chattts import ChatTTSModel
from ..model.gpt import KVCache
from .memory import COMPILE_MODES, SlotPlan, cuda_graph_shapes, step_shape
from .prompt import CodePrompt, prompt_embeddings
from .sampling import PENALTY_WINDOW, SamplingBatch, SamplingParams, penalty_counts, process_logits, sample


@dataclass
class RowRequest:
    key: object  # caller's handle, returned with the result
    prompt: CodePrompt
    params: SamplingParams
    stream: bool = False  # report this row's progress (`ContinuousBatcher.progress`) while it runs
    admitted_step: int = 0  # `stats.steps` when it entered a slot (for exact occupancy)


@dataclass
class PartialRow:
    """A streaming row still generating: views of what it produced so far (consume before the next step)."""

    key: object
    codes: torch.Tensor  # [T, num_vq] int64 on the device
    hidden: torch.Tensor  # [T, H] model dtype on the device


@dataclass
class FinishedRow:
    key: object
    codes: torch.Tensor  # [T, num_vq] int64 on the device (a view into the slot's buffer: consume before refill)
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
    # Attention and KV accounting, summed over decode steps: the keys the rows own (each row's context), the keys the
    # step read (computed rows x attended prefix), and the KV tokens rows held vs the tokens their slots reserve.
    own_keys: int = 0
    read_keys: int = 0
    held_tokens: int = 0
    reserved_tokens: int = 0
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
        """KV tokens rows actually held / tokens their slots reserved, over the steps (1.0: no reservation unused)."""
        return self.held_tokens / self.reserved_tokens if self.reserved_tokens else 0.0


class ContinuousBatcher:
    """Rows enter free slots as others finish; one decode step advances every live row."""

    def __init__(
        self,
        model: ChatTTSModel,
        plan: SlotPlan,
        spk_emb_id: int,
        check_every: int = 1,
        compile: str = "off",
    ) -> None:
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
        self.dtype = model.embed.emb_text.weight.dtype
        slots, max_new = plan.slots, plan.max_new_tokens
        self.cache = KVCache(config, slots, plan.slot_tokens, device, self.dtype)
        self.codes = torch.zeros(slots, max_new, config.num_vq, dtype=torch.int64, device=device)
        self.hidden_out = torch.zeros(slots, max_new, config.hidden_size, dtype=self.dtype, device=device)
        self.recent = torch.full((slots, PENALTY_WINDOW, config.num_vq), -1, dtype=torch.int64, device=device)
        self.hidden = torch.zeros(slots, config.hidden_size, dtype=self.dtype, device=device)
        self.position = torch.zeros(slots, dtype=torch.int64, device=device)
        self.produced = torch.zeros(slots, dtype=torch.int64, device=device)
        self.live = torch.zeros(slots, dtype=torch.bool, device=device)
        self.eos = torch.zeros(slots, dtype=torch.bool, device=device)
        self.max_new = torch.ones(slots, dtype=torch.int64, device=device)
        self.sampling = SamplingBatch.build([SamplingParams()] * slots, config.num_vq, config.num_audio_tokens, device)
        self.queue: deque[RowRequest] = deque()
        self.owner: list[RowRequest | None] = [None] * slots
        self.host_position = [0] * slots  # host mirror of positions (advances deterministically)
        self.progress: list[PartialRow] = []  # streaming rows' output so far, refreshed by every `step`
        self.stats = BatcherStats()
        self._step = self._step_tensors
        if compile != "off":
            self._step = self._compiled_step()

    def _compiled_step(self) -> Callable[[int, int], None]:
        """`_step_tensors` through torch.compile with dynamic pool and prefix sizes: one graph for every bucket."""
        if self.compile == "cudagraphs":
            # The step mutates these in place; marked static, CUDA graphs replay on them instead of copying.
            for tensor in (*self.cache.keys, *self.cache.values, self.codes, self.hidden_out, *self._row_state()):
                torch._dynamo.mark_static_address(tensor)
        return torch.compile(self._step_tensors, dynamic=True, fullgraph=True, mode=COMPILE_MODES[self.compile])

    def _row_state(self) -> tuple[torch.Tensor, ...]:
        """Every per-slot tensor indexed by slot alone (the cache, codes and hidden_out also have a time axis)."""
        sampling = (getattr(self.sampling, f.name) for f in fields(self.sampling))
        return (self.recent, self.hidden, self.position, self.produced, self.live, self.eos, self.max_new, *sampling)

    # ---------------------------------------------------------------------------------------------- intake

    def submit(self, key: object, prompt, params: SamplingParams, stream: bool = False) -> None:
        if prompt.length < 1:
            raise ValueError("every prompt needs at least one token")
        if prompt.length + params.max_new_tokens > self.plan.slot_tokens:
            raise ValueError(
                f"prompt of {prompt.length} tokens + max_new_tokens {params.max_new_tokens} does not fit a slot of "
                f"{self.plan.slot_tokens} tokens"
            )
        if params.max_new_tokens > self.plan.max_new_tokens:
            raise ValueError(f"max_new_tokens {params.max_new_tokens} exceeds this engine's {self.plan.max_new_tokens}")
        self.queue.append(RowRequest(key, prompt, params, stream))

    def cancel(self, keys: Callable[[object], bool]) -> int:
        """Drop every queued or running row whose key matches; running rows free their slots at once."""
        dropped = [r for r in self.queue if keys(r.key)]
        if dropped:
            self.queue = deque(r for r in self.queue if not keys(r.key))
        slots = [i for i, o in enumerate(self.owner) if o is not None and keys(o.key)]
        if slots:
            self.live[torch.tensor(slots, device=self.device)] = False
            for slot in slots:
                self.owner[slot] = None
                self.host_position[slot] = 0
        self.stats.cancelled += len(dropped) + len(slots)
        return len(dropped) + len(slots)

    @property
    def busy(self) -> bool:
        return bool(self.queue) or any(o is not None for o in self.owner)

    def free_slots(self) -> list[int]:
        return [i for i, o in enumerate(self.owner) if o is None]

    # ---------------------------------------------------------------------------------------------- steps

    def run(self) -> Iterator[FinishedRow]:
        """Drive until the queue is empty and every slot is idle, yielding rows as they finish."""
        while self.busy:
            yield from self.step()

    @torch.inference_mode()
    def step(self) -> list[FinishedRow]:
        """Admit what fits, then `check_every` decode steps; return the rows that finished."""
        self._admit()
        self._compact()
        self.progress = []
        if not any(o is not None for o in self.owner):
            return []
        for _ in range(self.check_every):
            self._decode_step()
        return self._collect()

    def _admit(self) -> None:
        free = self.free_slots()
        if not free or not self.queue:
            return
        admitted: list[tuple[int, RowRequest]] = []
        while free and self.queue:
            admitted.append((free.pop(0), self.queue.popleft()))
        slots = [s for s, _ in admitted]
        requests = [r for _, r in admitted]
        index = torch.tensor(slots, device=self.device)
        update = SamplingBatch.build(
            [r.params for r in requests], self.config.num_vq, self.config.num_audio_tokens, self.device
        )
        for name in ("temperature", "top_p", "top_k", "penalty", "min_new_tokens", "seed_lo", "seed_hi"):
            getattr(self.sampling, name)[index] = getattr(update, name)
        self.max_new[index] = torch.tensor([r.params.max_new_tokens for r in requests], device=self.device)
        self.produced[index] = 0
        self.eos[index] = False
        self.recent[index] = -1
        self._prefill(slots, requests)
        self.live[index] = True
        for slot, request in admitted:
            self.owner[slot] = request
            self.host_position[slot] = request.prompt.length
            request.admitted_step = self.stats.steps
        self.stats.admitted += len(admitted)

    def _compact(self) -> None:
        """Move the rows above the lowest free slots down into them: the live rows are again a prefix of the pool.

        A step computes every slot below its highest live row. Admission fills the lowest free slots, so holes stay
        only when nothing is queued (a job's tail, a quiet server): without this, rows that end early would leave
        the step computing idle slots until the highest row ends. Moving a row copies its cache entries once (about
        one step's attention reads of that row); its results do not change (rows are independent of their slot).
        """
        occupied = [i for i, o in enumerate(self.owner) if o is not None]
        if not occupied or occupied[-1] + 1 == len(occupied):
            return
        holes = [i for i in range(len(occupied)) if self.owner[i] is None]
        movers = [i for i in occupied if i >= len(occupied)]
        src = torch.tensor(movers, device=self.device)
        dst = torch.tensor(holes, device=self.device)
        tokens = max(self.host_position[i] for i in movers) + 1
        for cache in (*self.cache.keys, *self.cache.values):
            cache[dst, :tokens] = cache[src, :tokens]
        produced = min(self.plan.max_new_tokens, tokens)
        self.codes[dst, :produced] = self.codes[src, :produced]
        self.hidden_out[dst, :produced] = self.hidden_out[src, :produced]
        for tensor in self._row_state():
            tensor[dst] = tensor[src]
        self.live[src] = False
        for old, new in zip(movers, holes, strict=True):
            self.owner[new], self.owner[old] = self.owner[old], None
            self.host_position[new], self.host_position[old] = self.host_position[old], 0
        self.stats.moved += len(movers)

    def _prefill(self, slots: list[int], requests: list[RowRequest]) -> None:
        """Prompts of newly admitted rows, in passes of at most `prefill_chunk` tokens (what the plan's activation
        reserve covers): consecutive rows share a pass, right-padded to the longest, while rows x longest <=
        `prefill_chunk`; a longer prompt runs alone, `prefill_chunk` tokens at a time. Rows are independent (own
        slot, own positions), so how they are grouped does not change any row's result."""
        chunk = self.plan.prefill_chunk
        group: list[tuple[int, RowRequest]] = []
        longest = 0
        # Shortest prompts first, so rows of similar length share a pass and little of it is padding.
        by_length = sorted(zip(slots, requests, strict=True), key=lambda pair: pair[1].prompt.length)
        for slot, request in by_length:
            if group and (len(group) + 1) * min(chunk, max(longest, request.prompt.length)) > chunk:
                self._prefill_group(group)
                group, longest = [], 0
            group.append((slot, request))
            longest = max(longest, request.prompt.length)
        self._prefill_group(group)

    def _prefill_group(self, rows: list[tuple[int, RowRequest]]) -> None:
        """Prompts of (slot, row) pairs, right-padded to the longest and run `prefill_chunk` tokens at a time."""
        slots = [slot for slot, _ in rows]
        requests = [request for _, request in rows]
        lengths = [r.prompt.length for r in requests]
        longest = max(lengths)
        embeds = torch.zeros(len(slots), longest, self.config.hidden_size, device=self.device, dtype=self.dtype)
        for row, request in enumerate(requests):
            embeds[row, : lengths[row]] = self._embed_prompt(self.model, request.prompt, self.spk_emb_id)
        slot_index = torch.tensor(slots, device=self.device)
        last = torch.tensor([n - 1 for n in lengths], device=self.device)
        hidden_last = torch.zeros(len(slots), self.config.hidden_size, device=self.device, dtype=self.dtype)
        # Rows whose prompt is shorter than the pass's longest are padded; chunks past a row's end write cache
        # entries that its own decode steps overwrite before any of its queries can see them.
        for start in range(0, longest, self.plan.prefill_chunk):
            end = min(longest, start + self.plan.prefill_chunk)
            positions = torch.arange(start, end, device=self.device).unsqueeze(0).expand(len(slots), end - start)
            out = self.model.gpt(embeds[:, start:end], positions, self.cache, end, slots=slot_index)
            inside = (last >= start) & (last < end)
            if bool(inside.any()):
                picked = out[torch.arange(len(slots), device=self.device), (last - start).clamp(0, end - start - 1)]
                hidden_last = torch.where(inside.unsqueeze(-1), picked, hidden_last)
        self.hidden[slot_index] = hidden_last
        self.position[slot_index] = torch.tensor(lengths, device=self.device)
        self.stats.prefill_tokens += sum(lengths)

    def _decode_step(self) -> None:
        occupied = [i for i, o in enumerate(self.owner) if o is not None]
        # Slots fill from the bottom and `_compact` closes holes, so the live rows are a prefix of the pool, and the
        # step works on views of it (nothing is gathered). Bucketing (`step_shape`) trades a few idle rows and
        # masked cache positions for fewer shapes.
        longest = max(self.host_position[i] for i in occupied) + 1
        n, kv_len = step_shape(occupied[-1] + 1, longest, self.plan, self.compile, self.device.type)
        self._step(n, kv_len)
        own = 0
        for i in occupied:
            own += self.host_position[i] + 1  # the cache entries row i attended to in this step, its own included
            self.host_position[i] = min(self.host_position[i] + 1, self.plan.slot_tokens - 1)
        self.stats.own_keys += own
        self.stats.read_keys += n * kv_len
        self.stats.held_tokens += own
        self.stats.reserved_tokens += len(occupied) * self.plan.slot_tokens
        self.stats.steps += 1
        self.stats.slot_steps += self.plan.slots
        self.stats.busy_slot_steps += len(occupied)
        self.stats.computed_slot_steps += n
        self.stats.max_concurrent = max(self.stats.max_concurrent, len(occupied))
        if len(self.stats.history) < 10_000:
            self.stats.history.append(len(occupied))

    def _step_tensors(self, n: int, kv_len: int) -> None:
        """One decode step of slots [0, n) attending to cache positions [0, kv_len): sample every live row's next
        codes, record them, and run them through the GPT. Device tensors only (no host sync), so it compiles."""
        config = self.config
        live = (self.live & ~self.eos & (self.produced < self.max_new))[:n]
        steps = self.produced[:n]
        hidden = self.hidden[:n]
        sampling = self.sampling.prefix(n)
        logits = self.model.embed.code_logits(hidden).float()
        counts = penalty_counts(self.recent[:n], config.num_audio_tokens)
        tokens = sample(process_logits(logits, counts, steps, sampling, config.eos_code), sampling, steps)
        hit_eos = (tokens == config.eos_code).any(-1)
        keep = live & ~hit_eos
        rows = torch.arange(n, device=self.device)
        at = steps.clamp(max=self.plan.max_new_tokens - 1)
        self.codes[rows, at] = torch.where(keep.unsqueeze(-1), tokens, self.codes[rows, at])
        self.hidden_out[rows, at] = torch.where(keep.unsqueeze(-1), hidden, self.hidden_out[rows, at])
        window = steps % PENALTY_WINDOW
        self.recent[rows, window] = torch.where(live.unsqueeze(-1), tokens, self.recent[rows, window])
        self.eos[:n] |= live & hit_eos
        self.produced[:n] += keep.long()
        # Rows that just finished idle in place until collected; their (ignored) writes go to position 0.
        embeds = self.model.embed.embed_codes(tokens).to(self.dtype).unsqueeze(1)
        position = torch.where(live, self.position[:n], torch.zeros_like(steps))
        new_hidden = self.model.gpt(embeds, position.unsqueeze(1), self.cache, kv_len)[:, 0]
        self.hidden[:n] = torch.where(live.unsqueeze(-1), new_hidden, hidden)
        self.position[:n] += live.long()

    @torch.inference_mode()
    def record_cuda_graphs(self) -> list[tuple[int, int]]:
        """Run the compiled step twice at every CUDA-graph shape (`cuda_graph_shapes`) over the idle pool, so that
        serving only replays graphs: cudagraph trees run a new shape once without recording, then record it. No row
        is live, so the step changes no row's state (its ignored cache writes go to position 0 of idle slots, which
        prefill overwrites). Returns the shapes."""
        if self.compile != "cudagraphs":
            raise ValueError(f"only compile='cudagraphs' records CUDA graphs; this batcher runs {self.compile!r}")
        if self.busy:
            raise RuntimeError("record_cuda_graphs needs an idle pool: call it before submitting rows")
        shapes = cuda_graph_shapes(self.plan)
        for n, kv_len in shapes:
            for _ in range(2):
                self._step(n, kv_len)
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
        for slot, is_done in enumerate(flags):
            if not is_done:
                continue
            request = self.owner[slot]
            n = lengths[slot]
            finished.append(FinishedRow(request.key, self.codes[slot, :n], self.hidden_out[slot, :n], bool(eos[slot])))
            # Steps this row generated (its frames, plus the step that sampled EOS); with check_every > 1 it held
            # its slot for up to check_every - 1 more steps after ending, which are not busy.
            held = self.stats.steps - request.admitted_step
            self.stats.busy_slot_steps -= max(0, held - (n + eos[slot]))
            self.owner[slot] = None
            self.host_position[slot] = 0
        index = torch.tensor([s for s, f in enumerate(flags) if f], device=self.device)
        self.live[index] = False
        self.stats.finished += len(finished)
        return finished
