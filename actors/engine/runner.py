"""How a step runs on this device: the model runner (vLLM v1's `gpu_model_runner` room). It owns every per-slot
device tensor (outputs, hidden states, positions, sampling parameters, penalty windows), prefills admitted rows,
runs the decode step (eager, `torch.compile`d, or replayed from CUDA graphs), plans each step's cache reads, and
makes the one host sync of a block of steps. The model is reached through `ModelBackend` only."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..model.attention import ReadGroup
from ..model.gpt import PagedKVCache
from .backend import ModelBackend
from .memory import COMPILE_MODES, SlotPlan, ceil_to, cuda_graph_shapes, step_shape
from .prompt import prompt_embeddings
from .reads import read_groups
from .rows import Resume, RowRequest
from .sampling import PENALTY_WINDOW, SamplingBatch, SamplingParams, penalty_counts, sample

# The text rows of a decode step: device indexes of their slots, `plan.text_slots` at most each (None: none).
TextRows = tuple[torch.Tensor, ...] | None
# A step's reads: (rows computed, read groups, keys gathered, text rows).
StepReads = tuple[int, list[ReadGroup], int, TextRows]


class ModelRunner:
    def __init__(
        self,
        backend: ModelBackend,
        plan: SlotPlan,
        cache: PagedKVCache,
        tables: torch.Tensor,
        spk_emb_id: int,
        compile: str,
        text_eos_id: int | None,
    ) -> None:
        """`cache` and `tables`: the paged pool and the KV-block manager's block tables (the step reads both)."""
        self.backend = backend
        self.plan = plan
        self.spk_emb_id = spk_emb_id
        self.compile = compile
        self.text_eos_id = text_eos_id
        self.text_slots = plan.text_slots or plan.slots
        config = self.config = backend.config.gpt
        device = self.device = backend.device
        dtype = self.dtype = backend.dtype
        slots, max_new = plan.slots, plan.max_new_tokens
        self.cache = cache
        self.tables = tables
        self.codes = torch.zeros(slots, max_new, config.num_vq, dtype=torch.int64, device=device)
        self.hidden_out = torch.zeros(slots, max_new, config.hidden_size, dtype=dtype, device=device)
        self.recent = torch.full((slots, PENALTY_WINDOW, config.num_vq), -1, dtype=torch.int64, device=device)
        self.hidden = torch.zeros(slots, config.hidden_size, dtype=dtype, device=device)
        self.position = torch.zeros(slots, dtype=torch.int64, device=device)
        self.produced = torch.zeros(slots, dtype=torch.int64, device=device)
        self.live = torch.zeros(slots, dtype=torch.bool, device=device)
        self.eos = torch.zeros(slots, dtype=torch.bool, device=device)
        self.max_new = torch.ones(slots, dtype=torch.int64, device=device)
        self.text_row = torch.zeros(slots, dtype=torch.bool, device=device)
        self.sampling = SamplingBatch.build([SamplingParams()] * slots, config.num_vq, config.num_audio_tokens, device)
        self._group_rows: dict[tuple[int, ...], torch.Tensor] = {}  # device index tensors of recent read groups
        self.step: Callable[[int, list[ReadGroup], TextRows], None] = self._step_tensors
        if compile != "off":
            self.step = self._compiled_step()

    def _compiled_step(self) -> Callable[[int, list[ReadGroup], TextRows], None]:
        """`_step_tensors` through torch.compile with dynamic pool and prefix sizes: one graph for every bucket."""
        if self.compile == "cudagraphs":
            # The step mutates these in place; marked static, CUDA graphs replay on them instead of copying.
            static = (*self.cache.keys, *self.cache.values, self.tables, self.codes, self.hidden_out)
            for tensor in (*static, *self.row_state()):
                torch._dynamo.mark_static_address(tensor)
        return torch.compile(self._step_tensors, dynamic=True, fullgraph=True, mode=COMPILE_MODES[self.compile])

    def row_state(self) -> tuple[torch.Tensor, ...]:
        """Every per-slot tensor indexed by slot alone (codes and hidden_out also have a time axis)."""
        sampling = self.sampling.tensors()
        return (
            self.recent, self.hidden, self.position, self.produced, self.live, self.eos, self.max_new, self.text_row,
            *sampling,
        )  # fmt: skip

    # ---------------------------------------------------------------------------------------------- rows

    def load(self, slots: list[int], requests: list[RowRequest]) -> torch.Tensor:
        """Set the per-slot state of newly admitted rows (sampling, limits, cleared outputs); returns their index."""
        index = torch.tensor(slots, device=self.device)
        update = SamplingBatch.build(
            [r.params for r in requests], self.config.num_vq, self.config.num_audio_tokens, self.device
        )
        for name in ("temperature", "top_p", "top_k", "penalty", "min_new_tokens", "seed_lo", "seed_hi"):
            getattr(self.sampling, name)[index] = getattr(update, name)
        # an upper bound of the slots' top_k (`sample` checks the kept counts, so a stale larger bound is only slower)
        self.sampling.max_kept = max(self.sampling.max_kept, update.max_kept)
        self.max_new[index] = torch.tensor([r.params.max_new_tokens for r in requests], device=self.device)
        self.text_row[index] = torch.tensor([r.text for r in requests], device=self.device)
        self.produced[index] = 0
        self.eos[index] = False
        self.recent[index] = -1
        return index

    def snapshot(self, slot: int, produced: int) -> Resume:
        """What the row in `slot` produced so far, to resume it after a preemption."""
        return Resume(
            codes=self.codes[slot, :produced].clone(),
            hidden_out=self.hidden_out[slot, :produced].clone(),
            recent=self.recent[slot].clone(),
            hidden=self.hidden[slot].clone(),
        )

    def stop(self, slots: list[int]) -> None:
        if slots:
            self.live[torch.tensor(slots, device=self.device)] = False

    def move(self, src: torch.Tensor, dst: torch.Tensor, frames: int) -> None:
        """Rows `src` move to slots `dst` with their outputs (first `frames` of them) and state."""
        self.codes[dst, :frames] = self.codes[src, :frames]
        self.hidden_out[dst, :frames] = self.hidden_out[src, :frames]
        for tensor in self.row_state():
            tensor[dst] = tensor[src]
        self.live[src] = False

    # ---------------------------------------------------------------------------------------------- prefill

    def prefill(self, slots: list[int], requests: list[RowRequest]) -> int:
        """Contexts of newly admitted rows (their prompts, and for a preempted row also its codes so far), in passes
        of at most `prefill_chunk` tokens (what the plan's activation reserve covers): consecutive rows share a pass,
        right-padded to the longest, while rows x longest <= `prefill_chunk`; a longer context runs alone,
        `prefill_chunk` tokens at a time. Rows are independent (own blocks, own positions), so how they are grouped
        does not change any row's result. Returns the tokens prefilled."""
        chunk = self.plan.prefill_chunk
        group: list[tuple[int, RowRequest]] = []
        longest = 0
        # Shortest contexts first, so rows of similar length share a pass and little of it is padding.
        by_length = sorted(zip(slots, requests, strict=True), key=lambda pair: pair[1].context)
        for slot, request in by_length:
            if group and (len(group) + 1) * min(chunk, max(longest, request.context)) > chunk:
                self.prefill_group(group)
                group, longest = [], 0
            group.append((slot, request))
            longest = max(longest, request.context)
        self.prefill_group(group)
        return sum(r.context for r in requests)

    def _context_embeddings(self, request: RowRequest) -> torch.Tensor:
        embeds = prompt_embeddings(self.backend, request.prompt, self.spk_emb_id)
        if request.resume is None:
            return embeds
        if request.text:
            produced = self.backend.embed.embed_text(request.resume.codes[:, 0])
        else:
            produced = self.backend.embed.embed_codes(request.resume.codes)
        return torch.cat([embeds, produced.to(embeds.dtype)])

    def prefill_group(self, rows: list[tuple[int, RowRequest]]) -> None:
        """Contexts of (slot, row) pairs, right-padded to the longest and run `prefill_chunk` tokens at a time."""
        slots = [slot for slot, _ in rows]
        lengths = [request.context for _, request in rows]
        longest = max(lengths)
        embeds = torch.zeros(len(slots), longest, self.config.hidden_size, device=self.device, dtype=self.dtype)
        for row, (_, request) in enumerate(rows):
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
            out = self.backend.gpt(embeds[:, start:end], positions, self.cache, tables, [(None, end)])
            inside = (last >= start) & (last < end)
            if bool(inside.any()):
                picked = out[torch.arange(len(slots), device=self.device), (last - start).clamp(0, end - start - 1)]
                hidden_last = torch.where(inside.unsqueeze(-1), picked, hidden_last)
        self.hidden[slot_index] = hidden_last
        self.position[slot_index] = torch.tensor(lengths, device=self.device)
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

    # ---------------------------------------------------------------------------------------------- reads

    def _group_index(self, rows: list[int]) -> torch.Tensor:
        key = tuple(rows)
        index = self._group_rows.get(key)
        if index is None:
            if len(self._group_rows) >= 256:
                self._group_rows.clear()
            index = self._group_rows[key] = torch.tensor(rows, device=self.device)
        return index

    def plan_reads(self, positions: dict[int, int], text_slots: list[int], steps: int) -> StepReads:
        """(rows computed, read groups, keys gathered per step, text rows) for the next `steps` decode steps of the
        rows at `positions` (slot -> position), made before them so that the steps themselves create no tensors (no
        host-to-device copies on CUDA).

        Slots fill from the bottom and compaction closes holes, so the live rows are a prefix of the pool and a step
        works on views of it. The eager step reads rows in groups of similar length, each up to its longest row at
        the block's last step (one group of all rows for a backend without grouped reads); a compiled step reads all
        rows up to the bucketed longest (`step_shape`: fewer shapes, idle rows and masked positions read). Text rows
        are sampled from the text head by their slots' index, `plan.text_slots` at a time: exactly them when eager,
        padded (the last one repeated) to the lane's size when compiled, so a compiled step has one shape for them.
        """
        occupied = sorted(positions)
        size, cap = self.plan.block_size, self.plan.slot_tokens
        text_slots = list(text_slots)
        if self.compile != "off" and text_slots:
            text_slots += [text_slots[-1]] * (self.text_slots - len(text_slots))
        lane = self.text_slots
        chunks = [text_slots[i : i + lane] for i in range(0, len(text_slots), lane)]
        text = tuple(self._group_index(chunk) for chunk in chunks) if chunks else None
        n = occupied[-1] + 1
        if self.compile == "off" and not self.backend.grouped_reads:
            keys = min(cap, max(positions.values()) + steps)
            return n, [(None, keys)], n * ceil_to(keys, size), text
        if self.compile == "off":
            groups = read_groups([(i, min(cap, positions[i] + steps)) for i in occupied], size)
            read: list[ReadGroup] = [
                (None if len(rows) == n else self._group_index(rows), keys) for rows, keys in groups
            ]
            return n, read, sum(len(rows) * ceil_to(keys, size) for rows, keys in groups), text
        longest = max(positions.values()) + steps
        n, kv_len = step_shape(n, longest, self.plan, self.compile, self.device.type)
        kv_len = self.compiled_keys(kv_len)
        return n, [(None, kv_len)], n * kv_len, text

    def compiled_keys(self, kv_len: int) -> int:
        """Keys a compiled step reads: whole blocks, at least two, so that its graph never specialises on one block
        or on a partial one (a recompile while serving)."""
        size = self.plan.block_size
        return min(max(2 * size, ceil_to(kv_len, size)), self.plan.row_blocks * size)

    # ---------------------------------------------------------------------------------------------- decode

    def _step_tensors(self, n: int, read: list[ReadGroup], text: TextRows = None) -> None:
        """One decode step of slots [0, n) reading the cache as `read` says: sample every live row's next codes
        (text rows, the slots in `text`: their next token), record them, and run them through the GPT. Device
        tensors only (no host sync), so it compiles."""
        config, backend = self.config, self.backend
        live = (self.live & ~self.eos & (self.produced < self.max_new))[:n]
        steps = self.produced[:n]
        hidden = self.hidden[:n]
        sampling = self.sampling.prefix(n)
        logits = backend.embed.code_logits(hidden).float()
        recent = self.recent[:n]
        if text is not None:  # text rows' windows hold text ids: no codes to count
            recent = torch.where(self.text_row[:n].view(-1, 1, 1), -1, recent)
        counts = penalty_counts(recent, config.num_audio_tokens)
        tokens = sample(backend.process_logits(logits, counts, steps, sampling, config.eos_code), sampling, steps)
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
            embeds = backend.embed.embed_codes(tokens)
        else:
            codes_in = backend.embed.embed_codes(torch.where(is_text.unsqueeze(-1), 0, tokens))
            text_in = backend.embed.embed_text(torch.where(is_text, text_ids, 0))
            embeds = torch.where(is_text.unsqueeze(-1), text_in.to(codes_in.dtype), codes_in)
        embeds = embeds.to(self.dtype).unsqueeze(1)
        position = torch.where(live, self.position[:n], torch.zeros_like(steps))
        new_hidden = backend.gpt(embeds, position.unsqueeze(1), self.cache, self.tables[:n], read)[:, 0]
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
        logits = self.backend.embed.text_logits(hidden.index_select(0, rows)).float().unsqueeze(1)  # [m, 1, V]
        recent = self.recent[:n].index_select(0, rows)[:, :, :1]
        counts = penalty_counts(recent, self.config.num_text_tokens)
        scores = self.backend.process_logits(logits, counts, step, params, self.text_eos_id)
        return sample(scores, params, step)[:, 0]

    def record_cuda_graphs(self) -> list[tuple[int, int]]:
        """Run the compiled step twice at every CUDA-graph shape (`cuda_graph_shapes`) over the idle pool, so that
        serving only replays graphs: cudagraph trees run a new shape once without recording, then record it. No row
        is live and every table points at the null block, so the step changes no row's state. Returns the shapes."""
        shapes = cuda_graph_shapes(self.plan)
        for n, kv_len in shapes:
            for _ in range(2):
                self.step(n, [(None, self.compiled_keys(kv_len))], None)
        return shapes

    def finished_flags(self) -> tuple[list[int], list[int], list[int]]:
        """(done, length, ended by EOS) per slot: the one host sync of a `check_every` block of steps, in a single
        transfer."""
        done = (self.eos | (self.produced >= self.max_new)) & self.live
        flags, lengths, eos = (row.tolist() for row in torch.stack([done.long(), self.produced, self.eos.long()]).cpu())
        return flags, lengths, eos
