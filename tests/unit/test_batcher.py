"""The continuous batcher: budget arithmetic, measured memory, slot refill, occupancy, per-row independence."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile

from actors.engine.batcher import ContinuousBatcher, RowRequest, read_groups
from actors.engine.generate import generate
from actors.engine.memory import plan_slots, slot_bytes
from actors.engine.prompt import CodePrompt
from actors.engine.sampling import SamplingParams
from actors.model.config import ModelConfig
from actors.replica import Synthesizer
from actors.requests import RefineOptions, SynthesisRequest
from actors.text import decorate

NO_REFINE = RefineOptions(enabled=False)  # tests of the code stage alone (the refine stage has its own tests)

TINY = ModelConfig.from_name("tiny")


def _prompts(tokenizer, n: int) -> list[CodePrompt]:
    words = "one two three four five six seven eight nine ten".split()
    return [
        CodePrompt(tokenizer.encode(decorate(" ".join(words[: 1 + i % 10]) + ".", "[speed_5]", False)))
        for i in range(n)
    ]


def test_plan_arithmetic_uses_the_models_kv_bytes_per_token():
    full = ModelConfig.from_name("full")
    assert full.gpt.kv_bytes_per_token(2) == 2 * 20 * 768 * 2 == 61_440  # 60 KiB per token in fp16
    plan = plan_slots(full, torch.float16, 40 << 30, 512, 2048, block_size=16)
    kv, buffers = slot_bytes(full.gpt, torch.float16, 2560, 2048, block_size=16)
    assert kv == 61_440 * 2560
    block = 61_440 * plan.block_size
    assert plan.kv_bytes == (plan.blocks + 1) * block and plan.buffer_bytes == plan.slots * buffers
    assert plan.planned_bytes <= 40 << 30
    # the pool takes what the slots leave: one more block would not fit
    assert plan.planned_bytes + block > 40 << 30
    # slots are planned for rows at a fifth of their 2560 tokens; every row can still grow to its maximum
    assert plan.row_blocks == 160 and plan.blocks >= plan.slots * 32
    reserved = plan_slots(
        full, torch.float16, 40 << 30, 512, 2048, planned_row_share=1.0, exact_reads=False, block_size=16
    )
    assert reserved.blocks == reserved.slots * reserved.row_blocks  # the pre-paging plan: a full row per slot
    assert plan.slots >= 4 * reserved.slots, (plan.slots, reserved.slots)


def test_the_pool_holds_at_most_a_full_row_per_slot_and_at_least_one():
    """Capped slots (CPU's 64) get a pool of 64 full rows, not the whole budget; a small budget still holds one
    full row, however few slots it has."""
    full = ModelConfig.from_name("full")
    capped = plan_slots(full, torch.float32, 11 << 30, 640, 200, max_slots=64)
    assert capped.slots == 64 and capped.blocks == 64 * capped.row_blocks
    assert capped.planned_bytes < 11 << 30
    small = plan_slots(full, torch.float32, 1 << 30, 640, 2048)
    assert small.blocks >= small.row_blocks and small.slots >= 1
    assert small.planned_bytes <= 1 << 30


def test_cuda_graphs_reserve_the_steps_memory_on_top_of_prefill_and_waveforms():
    """Recorded CUDA graphs keep the decode step's activations in their pool between replays, so the plan adds
    the step to the larger of prefill and waveform decoding instead of taking the largest of the three."""
    from actors.engine.memory import activation_parts

    full = ModelConfig.from_name("full")
    eager = plan_slots(full, torch.float16, 40 << 30, 512, 2048)
    graphs = plan_slots(full, torch.float16, 40 << 30, 512, 2048, persistent_step=True)
    step, prefill = activation_parts(full.gpt, torch.float16, graphs.slots, 2560, 256, text_rows=graphs.text_slots)
    assert graphs.reserve_bytes == step + max(prefill, graphs.decode_bytes) + (16 << 20)
    assert graphs.reserve_bytes > eager.reserve_bytes and graphs.slots <= eager.slots
    assert graphs.planned_bytes <= 40 << 30


def test_a_budget_too_small_for_one_slot_is_refused_with_numbers():
    with pytest.raises(ValueError, match=r"cannot hold one slot of 2560 tokens \(needs [\d.]+ MiB\)"):
        plan_slots(ModelConfig.from_name("full"), torch.float16, 64 << 20, 512, 2048)


def test_more_rows_than_slots_refill_and_match_unlimited_slots(tiny_model, tiny_tokenizer):
    prompts = _prompts(tiny_tokenizer, 20)
    params = [SamplingParams(temperature=0.6, max_new_tokens=30, seed=i) for i in range(20)]
    few = generate(tiny_model, prompts, params, tiny_tokenizer.spk_emb_id, slots=3)
    many = generate(tiny_model, prompts, params, tiny_tokenizer.spk_emb_id)
    for i, (a, b) in enumerate(zip(few, many, strict=True)):
        assert torch.equal(a.codes, b.codes), f"row {i} changed when it waited for a slot"
        torch.testing.assert_close(a.hidden, b.hidden, rtol=1e-4, atol=1e-4)


def test_slots_stay_busy_on_a_long_queue(tiny_model, tiny_tokenizer):
    """Continuous batching: with 40 rows through 8 slots, >= 85% of slot-steps carry a live row."""
    plan = plan_slots(TINY, torch.float32, 256 << 20, 64, 40, max_slots=8)
    batcher = ContinuousBatcher(tiny_model, plan, tiny_tokenizer.spk_emb_id)
    for i, prompt in enumerate(_prompts(tiny_tokenizer, 40)):
        batcher.submit(i, prompt, SamplingParams(temperature=0.8, max_new_tokens=40, seed=i))
    finished, queued = [], []
    while batcher.busy:
        finished += [row.key for row in batcher.step()]
        queued.append(batcher.queued_rows)  # rows still waiting after this step's admission
    assert sorted(finished) == list(range(40))
    assert batcher.stats.max_concurrent == 8
    # steady state: a slot freed by a finished row is refilled at the next step, so every step that left rows
    # waiting ran all 8 slots (static batching, or admission only when the pool is empty, would not)
    steps = batcher.stats.history
    assert len(steps) == len(queued)
    waiting = [busy for busy, left in zip(steps, queued, strict=True) if left]
    assert len(waiting) >= 40, f"only {len(waiting)} steps ran with rows waiting"
    assert all(busy == 8 for busy in waiting), waiting
    assert batcher.stats.occupancy >= 0.85, batcher.stats.occupancy


@pytest.mark.parametrize("check_every", [1, 8])
def test_occupancy_counts_only_steps_that_generate(tiny_model, tiny_tokenizer, check_every):
    """A slot is busy for the steps its row generates: its frames plus the step that sampled EOS. With
    `check_every` 8 (CUDA: one host sync per 8 steps) an ended row keeps its slot until the next check; those
    steps are not busy, so the reported occupancy is the same work measure on every device."""
    plan = plan_slots(TINY, torch.float32, 48 << 20, 64, 40, max_slots=8)
    batcher = ContinuousBatcher(tiny_model, plan, tiny_tokenizer.spk_emb_id, check_every=check_every)
    for i, prompt in enumerate(_prompts(tiny_tokenizer, 24)):  # some rows end by EOS, some at max_new_tokens
        batcher.submit(i, prompt, SamplingParams(temperature=0.8, max_new_tokens=4 + (i % 4) * 12, seed=i))
    rows = list(batcher.run())
    generated = sum(int(row.codes.shape[0]) + row.finished for row in rows)
    assert any(row.finished for row in rows) and any(not row.finished for row in rows)
    assert batcher.stats.busy_slot_steps == generated
    assert batcher.stats.occupancy == generated / (batcher.stats.steps * plan.slots)


def test_rows_that_end_early_are_closed_up_so_steps_compute_only_live_rows(tiny_model, tiny_tokenizer):
    """With nothing queued, a row that ends below others leaves a hole; the rows above it move down, so a step
    computes only live rows (CPU runs exact shapes), and every row's output equals that row generated alone."""
    lengths = [10, 40, 14, 36, 18, 32, 22, 28]  # low slots end first: holes under running rows
    prompts = _prompts(tiny_tokenizer, len(lengths))
    params = [
        SamplingParams(temperature=0.7, max_new_tokens=n, min_new_tokens=n, seed=i) for i, n in enumerate(lengths)
    ]
    plan = plan_slots(TINY, torch.float32, 64 << 20, 64, 40, max_slots=8)
    batcher = ContinuousBatcher(tiny_model, plan, tiny_tokenizer.spk_emb_id)
    for i, (prompt, p) in enumerate(zip(prompts, params, strict=True)):
        batcher.submit(i, prompt, p)
    rows = {}
    while batcher.busy:  # finished rows are views into their slots: keep copies (moved rows overwrite them)
        rows.update((r.key, (r.codes.clone(), r.hidden.clone())) for r in batcher.step())
    assert sorted(rows) == list(range(8))
    assert [rows[i][0].shape[0] for i in range(8)] == lengths
    assert batcher.stats.moved >= 3, batcher.stats.moved
    assert batcher.stats.computed_slot_steps == batcher.stats.busy_slot_steps, "a step computed idle slots"
    for i in range(8):
        alone = generate(tiny_model, [prompts[i]], [params[i]], tiny_tokenizer.spk_emb_id)[0]
        assert torch.equal(alone.codes, rows[i][0]), f"row {i} changed when it moved slots"
        torch.testing.assert_close(alone.hidden, rows[i][1], rtol=1e-4, atol=1e-4)


def test_steps_over_the_idle_pool_change_no_later_row(tiny_model, tiny_tokenizer):
    """What `ContinuousBatcher.record_cuda_graphs` relies on (it runs the step at every CUDA-graph shape before any
    row arrives): a step over idle slots, at any pool and prefix size, leaves nothing a later row can see."""
    prompts = _prompts(tiny_tokenizer, 6)
    params = [SamplingParams(temperature=0.7, max_new_tokens=20, min_new_tokens=4, seed=i) for i in range(6)]
    plan = plan_slots(TINY, torch.float32, 64 << 20, 64, 20, max_slots=8)
    batcher = ContinuousBatcher(tiny_model, plan, tiny_tokenizer.spk_emb_id)
    with torch.inference_mode():
        for n in range(1, plan.slots + 1):
            for kv_len in (1, plan.slot_tokens // 2, plan.slot_tokens):
                batcher.runner.step(n, [(None, kv_len)], None)
    for i, (prompt, p) in enumerate(zip(prompts, params, strict=True)):
        batcher.submit(i, prompt, p)
    rows = {r.key: r.codes.clone() for r in batcher.run()}
    for i, fresh in enumerate(generate(tiny_model, prompts, params, tiny_tokenizer.spk_emb_id)):
        assert torch.equal(fresh.codes, rows[i]), f"row {i} changed after idle steps"


def test_prefill_in_passes_of_a_few_tokens_equals_one_pass(tiny_model, tiny_tokenizer):
    """Prompts longer than `prefill_chunk` run in several chunks and short ones share a pass, never more than
    `prefill_chunk` tokens a pass; every row's codes equal those of a one-pass prefill (`generate`: 512 tokens)."""
    words = "one two three four five six seven eight nine ten".split()
    texts = [" ".join(words[: 1 + i]) for i in range(3)] + [" ".join(words * (1 + i % 4)) for i in range(7)]
    prompts = [CodePrompt(tiny_tokenizer.encode(decorate(t + ".", "[speed_5]", False))) for t in texts]
    params = [SamplingParams(temperature=0.7, max_new_tokens=24, min_new_tokens=4, seed=i) for i in range(len(texts))]
    chunk = 16
    assert min(p.length for p in prompts) * 2 <= chunk and max(p.length for p in prompts) > 2 * chunk
    plan = plan_slots(TINY, torch.float32, 64 << 20, 64, 24, prefill_chunk=chunk, max_slots=len(prompts))
    batcher = ContinuousBatcher(tiny_model, plan, tiny_tokenizer.spk_emb_id)
    passes: list[tuple[int, int]] = []  # (rows, tokens) of every prefill pass
    prefilling = []
    prefill_group = batcher.runner.prefill_group

    def in_prefill(rows):
        prefilling.append(True)
        try:
            prefill_group(rows)
        finally:
            prefilling.pop()

    def record(module, args, kwargs):
        if prefilling:
            passes.append(tuple(args[0].shape[:2]))

    batcher.runner.prefill_group = in_prefill
    for i, (prompt, p) in enumerate(zip(prompts, params, strict=True)):
        batcher.submit(i, prompt, p)
    hook = tiny_model.gpt.register_forward_pre_hook(record, with_kwargs=True)
    try:
        rows = {r.key: (r.codes.clone(), r.hidden.clone()) for r in batcher.run()}
    finally:
        hook.remove()
    assert batcher.stats.max_concurrent == len(prompts), "every row is admitted in the first step"
    assert all(n * tokens <= chunk for n, tokens in passes), passes
    assert any(n > 1 for n, _ in passes), "short prompts share a pass"
    assert sum(n * tokens for n, tokens in passes) >= sum(p.length for p in prompts)
    one_pass = generate(tiny_model, prompts, params, tiny_tokenizer.spk_emb_id)
    for i, row in enumerate(one_pass):
        assert torch.equal(row.codes, rows[i][0]), f"row {i} ({prompts[i].length} tokens) changed with chunked prefill"
        torch.testing.assert_close(row.hidden, rows[i][1], rtol=1e-4, atol=1e-4)


def _peak_transient_bytes(fn) -> tuple[int, object]:
    """Peak of the CPU bytes allocated inside `fn`: every allocation and free the profiler recorded, in time order
    (per-op totals would hide temporaries an op frees itself, such as the contiguous copies inside a matmul)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    allocations, pending = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while pending:
        event = pending.pop()
        pending.extend(event.children)
        if event.tag == _EventType.Allocation and event.extra_fields.device.type == "cpu":
            allocations.append((event.start_time_ns, -event.extra_fields.alloc_size))  # ties: allocations first
    assert allocations, "the profiler recorded no allocations"
    live = peak = 0
    for _, size in sorted(allocations):
        live -= size
        peak = max(peak, live)
    return peak, result


def _preallocated_bytes(batcher: ContinuousBatcher) -> int:
    """Every buffer the batcher allocates once: cache, outputs and per-slot state."""
    runner = batcher.runner
    cache = (*runner.cache.keys, *runner.cache.values)
    return sum(t.numel() * t.element_size() for t in (*cache, runner.codes, runner.hidden_out, *runner.row_state()))


@pytest.mark.parametrize(
    "refine", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["code-rows", "with-refine-rows"]
)
def test_measured_memory_stays_within_the_budget(tiny_checkpoint, tmp_path, refine):
    """Tensor accounting on CPU: preallocated cache + buffers, plus the profiler's peak of everything else; also with
    the refine-text stage on (text rows sample the whole text vocabulary in their lane)."""
    budget = 48 << 20
    synth = Synthesizer(model=str(tiny_checkpoint), device="cpu", budget_mib=budget >> 20, max_prompt_tokens=128,
                        max_new_tokens=96, max_slots=None, cache_dir=tmp_path)  # fmt: skip
    batcher = synth.batcher
    preallocated = _preallocated_bytes(batcher)
    assert preallocated <= synth.plan.kv_bytes + synth.plan.buffer_bytes
    assert synth.plan.slots >= 4
    requests = [
        SynthesisRequest(id=f"r{i}", text=f"Sentence number {i} for the budget test.", params=SamplingParams(max_new_tokens=96, min_new_tokens=40, seed=i), refine=RefineOptions(enabled=refine))
        for i in range(2 * synth.plan.slots)
    ]  # fmt: skip
    peak, results = _peak_transient_bytes(lambda: synth.synthesize(requests))
    assert all(r.ok for r in results)
    print(
        f"budget {budget >> 20} MiB: preallocated {preallocated / 2**20:.1f} MiB + transient peak {peak / 2**20:.1f} MiB"
    )
    assert preallocated + peak <= budget, f"{(preallocated + peak) / 2**20:.1f} MiB > {budget / 2**20:.0f} MiB"
    if refine:
        assert batcher.stats.text_row_steps > 0 and synth.stats.refined_segments == len(requests)
    else:
        assert batcher.stats.max_concurrent == synth.plan.slots


def test_admitting_every_slot_with_long_prompts_stays_within_the_budget(tiny_model, tiny_tokenizer):
    """A cold start admits as many rows at once as the pool has blocks for. Prefill runs them in passes of at most
    `prefill_chunk` tokens, the size the activation reserve covers: one pass of every row's first 256 tokens,
    attending to ~450 cached tokens each, would need several times the budget."""
    budget = 64 << 20
    plan = plan_slots(TINY, torch.float32, budget, 480, 32)
    batcher = ContinuousBatcher(tiny_model, plan, tiny_tokenizer.spk_emb_id)
    preallocated = _preallocated_bytes(batcher)
    assert preallocated <= plan.kv_bytes + plan.buffer_bytes
    assert plan.slots >= 16 and plan.prefill_chunk == 256
    ids = torch.randint(1, TINY.gpt.num_text_tokens, (plan.slots, 480), generator=torch.Generator().manual_seed(0))
    for i in range(plan.slots):
        prompt = CodePrompt(ids[i, : 380 + i % 100].tolist())
        batcher.submit(i, prompt, SamplingParams(max_new_tokens=32, min_new_tokens=32, seed=i))
    peak, finished = _peak_transient_bytes(lambda: [row.key for row in batcher.run()])
    assert sorted(finished) == list(range(plan.slots))
    first = batcher.stats.history[0]
    fits, taken = 0, 0  # rows, in order, whose prompt + look-ahead the pool holds at once
    for i in range(plan.slots):
        taken += -(-(380 + i % 100 + plan.lookahead_tokens) // plan.block_size)
        fits += taken <= plan.pool_blocks
    assert first == fits >= 8, "rows are admitted together while the pool has blocks for them"
    report = (
        f"preallocated {preallocated / 2**20:.1f} MiB + transient peak {peak / 2**20:.1f} MiB "
        f"(reserve {plan.reserve_bytes / 2**20:.1f} MiB, budget {budget >> 20} MiB)"
    )
    print(report)
    assert peak <= plan.reserve_bytes, report
    assert preallocated + peak <= budget, report


@pytest.mark.gpu
@pytest.mark.parametrize("compile_mode", ["off", "cudagraphs"])
def test_cuda_peak_memory_stays_within_the_budget(tiny_checkpoint, tmp_path, compile_mode):
    """On CUDA the allocator's own peak is the measure: everything the replica allocates beyond its weights (KV
    cache, buffers, activations, decoding, CUDA-graph pools) must fit the budget."""
    budget = 256 << 20
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()  # whatever earlier tests in this process still hold
    torch.cuda.reset_peak_memory_stats()
    synth = Synthesizer(model=str(tiny_checkpoint), device="cuda", budget_mib=budget >> 20, max_prompt_tokens=128,
                        max_new_tokens=96, cache_dir=tmp_path, compile=compile_mode)  # fmt: skip
    weights = sum(t.numel() * t.element_size() for t in (*synth.model.parameters(), *synth.model.buffers()))
    requests = [
        SynthesisRequest(id=f"r{i}", text=f"Sentence number {i} for the budget test.", params=SamplingParams(max_new_tokens=96, min_new_tokens=40, seed=i), refine=NO_REFINE)
        for i in range(2 * synth.plan.slots)
    ]  # fmt: skip
    results = synth.synthesize(requests)
    torch.cuda.synchronize()
    assert all(r.ok for r in results)
    used = torch.cuda.max_memory_allocated() - base - weights
    assert used <= budget, f"{used / 2**20:.1f} MiB beyond the weights > the {budget >> 20} MiB budget"
    assert synth.batcher.stats.max_concurrent == synth.plan.slots


@pytest.mark.gpu
def test_two_half_device_replicas_plan_within_the_device(tiny_checkpoint, tmp_path):
    """Two replicas with device_share=0.5 in one process (two Serve models, or two 0.5-GPU actors on one device):
    each budgets from its half less its own weights, not from the free memory it sees, so together they never
    plan more than budget_fraction of the device."""
    torch.cuda.synchronize()
    total = torch.cuda.get_device_properties(0).total_memory
    synths = [
        Synthesizer(
            model=str(tiny_checkpoint),
            device="cuda",
            device_share=0.5,
            max_prompt_tokens=128,
            max_new_tokens=96,
            cache_dir=tmp_path,
        )
        for _ in range(2)
    ]
    weights = [sum(t.numel() * t.element_size() for t in (*s.model.parameters(), *s.model.buffers())) for s in synths]
    for synth, held in zip(synths, weights, strict=True):
        assert synth.budget_bytes <= int(0.85 * total * 0.5) - held, (synth.budget_bytes, held)
    assert sum(s.budget_bytes for s in synths) + sum(weights) <= 0.85 * total


def test_rows_that_do_not_fit_a_slot_are_refused(tiny_model, tiny_tokenizer):
    plan = plan_slots(TINY, torch.float32, 64 << 20, 16, 20, max_slots=2)
    batcher = ContinuousBatcher(tiny_model, plan, tiny_tokenizer.spk_emb_id)
    with pytest.raises(ValueError, match="does not fit a slot"):
        batcher.submit(0, CodePrompt(list(range(30))), SamplingParams(max_new_tokens=10))
    with pytest.raises(ValueError, match="exceeds this engine"):
        batcher.submit(0, CodePrompt([1, 2, 3]), SamplingParams(max_new_tokens=21))


# Ops after which the host waits for the device: a scalar read (.item(), float(t), bool(t)), torch.equal, and every op
# whose output size depends on the values (nonzero, masked_select, unique), as boolean-mask indexing does.
_HOST_SYNCS = {"item", "_local_scalar_dense", "is_nonzero", "equal", "nonzero", "masked_select"}
_HOST_SYNCS |= {"_unique", "_unique2", "unique_dim", "unique_consecutive", "unique_dim_consecutive"}


class _OpCounter(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts clones, host syncs, copies on one device, device<->host transfers and cross-device ops dispatched inside
    the block."""

    def __init__(self) -> None:
        super().__init__()
        self.clones = self.syncs = self.cross_device = self.copies = self.to_host = self.to_device = self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.ops += 1
        name = func.overloadpacket.__name__
        if name == "clone":
            self.clones += 1
        indices = args[1] if name in ("index", "index_put", "index_put_") else ()
        if name in _HOST_SYNCS or any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in indices):
            self.syncs += 1
        # copy_(target, source); _to_copy(source) -> target, and so does `to` (how .to(), .cpu() and .float() dispatch
        # under inference mode), which returns its input when nothing changes. A dtype conversion is not a copy.
        if name == "copy_" or (name in ("_to_copy", "to") and out is not args[0]):
            source, target = (args[1], args[0]) if name == "copy_" else (args[0], out)
            if source.device != target.device:
                self.to_host += target.device.type == "cpu"
                self.to_device += source.device.type == "cpu"
            elif name == "copy_" or source.dtype == target.dtype:
                self.copies += 1
        devices = {a.device for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)}
        if isinstance(out, torch.Tensor):
            devices.add(out.device)
        if len(devices) > 1:
            self.cross_device += 1
        return out


def _count_decode_steps(model, tokenizer) -> _OpCounter:
    plan = plan_slots(TINY, torch.float32, 64 << 20, 64, 40, max_slots=8)
    batcher = ContinuousBatcher(model, plan, tokenizer.spk_emb_id, check_every=4)
    for i, prompt in enumerate(_prompts(tokenizer, 8)):
        batcher.submit(i, prompt, SamplingParams(temperature=0.7, max_new_tokens=40, min_new_tokens=20, seed=i))
    batcher.step()  # admission + prefill + first block
    with torch.inference_mode():  # what `step` does before its decode steps: blocks, then the read plan
        batcher._reserve_ahead(8)
        read = batcher._plan_reads(8)
    counter = _OpCounter()
    with torch.inference_mode(), counter:
        for _ in range(8):
            batcher._decode_step(*read)
    return counter


def test_decode_steps_make_no_clones_no_host_syncs_and_no_device_copies(tiny_model, tiny_tokenizer, monkeypatch):
    """On CPU a device<->host copy cannot happen, so the CPU run checks clones and host syncs (.item(), bool()).
    The draw runs as on a GPU (every code raced: the CPU's candidate race reads the kept counts, a sync that costs
    nothing on the CPU; the test below counts it).

    Cross-device copies are counted too; they can only be non-zero on a CUDA run (see the gpu-marked twin).
    """
    from actors.engine import sampling

    monkeypatch.setattr(sampling, "CANDIDATE_RACE_DEVICES", frozenset())
    counter = _count_decode_steps(tiny_model, tiny_tokenizer)
    assert counter.ops > 100, "the counter must see the decode step's ops"
    assert counter.clones == 0
    assert counter.syncs == 0
    assert counter.cross_device == 0


def test_the_cpu_draw_reads_the_kept_counts_once_a_step(tiny_model, tiny_tokenizer):
    """The CPU's candidate race (`actors.engine.sampling.sample`) costs one read of the kept counts per decode step
    and nothing else: no clones, no other sync."""
    counter = _count_decode_steps(tiny_model, tiny_tokenizer)
    assert counter.ops > 100 and counter.clones == 0
    assert counter.syncs == 8  # 8 decode steps


@pytest.mark.gpu
def test_decode_steps_on_cuda_make_no_device_host_copies(tiny_checkpoint):
    from actors.checkpoint import load_model
    from actors.tokenizer import TextTokenizer

    model = load_model(tiny_checkpoint / "asset", device="cuda", dtype=torch.float16)
    tokenizer = TextTokenizer(tiny_checkpoint / "asset" / "tokenizer", 21178)
    counter = _count_decode_steps(model, tokenizer)
    assert counter.clones == 0 and counter.syncs == 0 and counter.cross_device == 0


@dataclass
class _Handoff:
    pumps: int  # engine steps counted (after admission)
    groups: list[int]  # rows of every decode group
    done: int  # segments handed back finished
    everything: _OpCounter  # the whole steps: decode steps, `_collect`, the handoff
    decoding: _OpCounter  # inside `Synthesizer._decode`: finished rows -> Decoder (or DVAE) -> Vocos -> host arrays


def _count_handoff(synth: Synthesizer, monkeypatch: pytest.MonkeyPatch) -> _Handoff:
    """Ops of every `Synthesizer.pump` after the one that admits all rows, until the pool drains. Rows end in three
    waves of 3, 2 and 3 (also on CUDA, which checks for finished rows every 8 steps), so finished rows go to the
    decoder in groups. The draw runs as on a GPU (every code raced), so a host sync counted is one the GPU would pay
    (the CPU's candidate race reads the kept counts each step: free there, counted in its own test)."""
    from actors.engine import sampling

    monkeypatch.setattr(sampling, "CANDIDATE_RACE_DEVICES", frozenset())
    lengths = [12, 12, 12, 20, 20, 28, 28, 28]
    requests = [
        SynthesisRequest(id=f"r{i}", text=f"Sentence number {i} for the handoff.", params=SamplingParams(max_new_tokens=n, min_new_tokens=n, seed=i), refine=NO_REFINE)
        for i, n in enumerate(lengths)
    ]  # fmt: skip
    results, segments = synth.prepare(requests)
    assert all(r.ok for r in results) and len(segments) == len(lengths) <= synth.plan.slots
    for segment in segments:
        synth.submit(segment, (segment.request, segment.index))
    assert not any(out.done for out in synth.pump())  # admission and prefill, not counted
    counted = _Handoff(pumps=0, groups=[], done=0, everything=_OpCounter(), decoding=_OpCounter())
    decode = synth.outputs._decode

    def counting_decode(rows):
        counted.groups.append(len(rows))
        with counted.decoding:
            return decode(rows)

    monkeypatch.setattr(synth.outputs, "_decode", counting_decode)
    with torch.inference_mode(), counted.everything:
        while synth.batcher.busy:
            counted.done += sum(out.done for out in synth.pump())
            counted.pumps += 1
    return counted


@pytest.mark.parametrize("decoder", ["hidden", "dvae"])
def test_finished_rows_reach_host_audio_without_clones_or_host_syncs(tiny_checkpoint, tmp_path, monkeypatch, decoder):
    """The handoff: finished rows are views of their slots; they go through the Decoder (or DVAE) and Vocos on the
    device, padded into one batch per group (one copy per row), and reach the host as one copy of the group's audio
    and one of its codes. Nothing is cloned and the host never waits on the device. (On CPU a device<->host copy
    cannot be told from any other copy, so the CPU run counts every copy; the gpu-marked twin counts transfers.)"""
    synth = Synthesizer(model=str(tiny_checkpoint), device="cpu", decoder=decoder, max_slots=8,
                        max_new_tokens=32, max_prompt_tokens=64, cache_dir=tmp_path)  # fmt: skip
    counted = _count_handoff(synth, monkeypatch)
    assert counted.done == 8 and counted.groups == [3, 2, 3], (counted.done, counted.groups)
    assert counted.decoding.ops > 100, "the counter must see the decoder's and vocoder's ops"
    assert counted.everything.ops > counted.decoding.ops, "the counters must nest"
    assert counted.everything.clones == 0
    assert counted.everything.syncs == 0
    assert counted.decoding.copies == sum(counted.groups) + 2 * len(counted.groups)
    assert counted.everything.to_host == counted.everything.to_device == 0


@pytest.mark.gpu
def test_finished_rows_reach_the_host_in_one_transfer_per_step_and_two_per_decode_group(
    tiny_checkpoint, tmp_path, monkeypatch
):
    """On CUDA: one device-to-host transfer per engine step (`_collect`: which rows finished), one for each decode
    group's audio and one for its codes; nothing goes back to the device, nothing is cloned, no host sync."""
    synth = Synthesizer(model=str(tiny_checkpoint), device="cuda", max_slots=8, max_new_tokens=32,
                        max_prompt_tokens=64, cache_dir=tmp_path)  # fmt: skip
    counted = _count_handoff(synth, monkeypatch)
    assert counted.done == 8 and sum(counted.groups) == 8
    assert counted.everything.clones == 0 and counted.everything.syncs == 0
    assert counted.everything.to_host == counted.pumps + 2 * len(counted.groups), counted.everything.to_host
    assert counted.everything.to_device == 0
    assert counted.decoding.to_host == 2 * len(counted.groups)


def test_a_calls_longest_rows_are_admitted_first_and_results_do_not_change(synthesizer, monkeypatch):
    """Length-aware admission: within a call, rows enter the engine longest text first (so a call does not end
    with one long row alone in the slots); every row's codes are what they are when synthesised alone."""
    from actors.requests import SynthesisRequest

    texts = {
        "short": "hi there.",
        "long": "one two three four five six seven eight nine ten eleven.",
        "mid": "a b c d.",
    }
    requests = [
        SynthesisRequest(id=k, text=v, params=SamplingParams(seed=7, max_new_tokens=16), refine=NO_REFINE)
        for k, v in texts.items()
    ]
    order: list[str] = []
    submit = synthesizer.batcher.submit

    def spy(key, prompt, params, stream=False):
        order.append(requests[key[-2]].id)  # key: (call, row, segment)
        submit(key, prompt, params, stream)

    monkeypatch.setattr(synthesizer.batcher, "submit", spy)
    together = synthesizer.synthesize(requests)
    assert order == ["long", "mid", "short"]
    monkeypatch.undo()
    for request, result in zip(requests, together, strict=True):
        alone = synthesizer.synthesize([request])[0]
        assert torch.equal(torch.from_numpy(alone.codes), torch.from_numpy(result.codes)), request.id
        # waveforms decoded in a group of another size differ in float rounding only
        torch.testing.assert_close(torch.from_numpy(alone.audio), torch.from_numpy(result.audio), rtol=1e-5, atol=1e-6)


def test_admitted_rows_share_prefill_passes_by_prompt_length(tiny_model, tiny_tokenizer, monkeypatch):
    """Rows admitted together are grouped shortest prompt first, so a pass pads a few similar prompts to the
    longest of them (in admission order, [12, 3, 11, 4, 3] tokens would take four passes, two of them alone)."""
    from actors.engine.batcher import RowRequest

    plan = plan_slots(TINY, torch.float32, 64 << 20, 64, 24, prefill_chunk=16, max_slots=8)
    batcher = ContinuousBatcher(tiny_model, plan, tiny_tokenizer.spk_emb_id)
    groups: list[list[int]] = []
    monkeypatch.setattr(batcher.runner, "prefill_group", lambda rows: groups.append([r.prompt.length for _, r in rows]))
    requests = [RowRequest(i, CodePrompt(list(range(n))), SamplingParams()) for i, n in enumerate([12, 3, 11, 4, 3])]
    batcher.runner.prefill(list(range(5)), requests)
    assert groups == [[3, 3, 4], [11], [12]]


def test_attention_and_kv_accounting_follow_each_rows_own_length(tiny_model, tiny_tokenizer):
    """The eager step reads rows in groups of similar length, each up to its longest row, in whole blocks: with
    one-token blocks, rows of 4 and 20 prompt tokens each read exactly their own context (two groups); with
    16-token blocks the stats count every gathered block, and KV held vs the blocks' tokens."""
    lengths = (4, 20)
    params = [SamplingParams(max_new_tokens=6, min_new_tokens=6, seed=key) for key in range(2)]
    prompts = [CodePrompt(list(range(1, length + 1))) for length in lengths]
    fresh = generate(tiny_model, prompts, params, tiny_tokenizer.spk_emb_id)
    # the step that samples token t attends to the prompt and t - 1 generated tokens; 6 steps for 6 tokens (the
    # first comes from the prefill)
    for block_size in (1, 16):
        plan = plan_slots(TINY, torch.float32, 64 << 20, 64, 40, max_slots=4, block_size=block_size)
        batcher = ContinuousBatcher(tiny_model, plan, tiny_tokenizer.spk_emb_id)
        for key, (prompt, p) in enumerate(zip(prompts, params, strict=True)):
            batcher.submit(key, prompt, p)
        rows = {r.key: r.codes.clone() for r in batcher.run()}
        for key in range(2):
            assert torch.equal(rows[key], fresh[key].codes), f"row {key} changed with blocks of {block_size}"
        stats = batcher.stats
        steps = range(1, stats.steps + 1)
        own = sum(length + t for length in lengths for t in steps)
        read = sum(-(-(length + t) // block_size) * block_size for length in lengths for t in steps)
        assert (stats.own_keys, stats.read_keys) == (own, read)
        assert stats.attention_read_efficiency == pytest.approx(own / read)
        blocks = sum(-(-(length + t + 1) // block_size) for length in lengths for t in range(stats.steps))
        assert stats.reserved_tokens == blocks * block_size and stats.held_tokens == own
    assert 0 < stats.kv_held_share < 1 and stats.attention_read_efficiency < 1


def test_rows_of_similar_length_share_a_read_group(tiny_model, tiny_tokenizer):
    """Grouping: rows within GROUP_EFFICIENCY of the group's longest (in whole blocks) share a gather; a much
    shorter row reads alone. Every row is in exactly one group, longest first."""
    plan = plan_slots(TINY, torch.float32, 64 << 20, 64, 40, max_slots=6)
    batcher = ContinuousBatcher(tiny_model, plan, tiny_tokenizer.spk_emb_id)
    batcher.scheduler.host_position[:] = [63, 62, 60, 9, 8, 30]
    running = RowRequest("running", CodePrompt([1]), SamplingParams())  # only that a slot is taken matters here
    batcher.scheduler.owner[:] = [running] * 6
    assert read_groups(list(enumerate([64, 63, 61, 10, 9, 31])), 8) == [([0, 1, 2], 64), ([5], 31), ([3, 4], 10)]
    with torch.inference_mode():
        n, read, gathered, text = batcher._plan_reads(1)
    assert text is None  # no text rows: the step runs the code path only
    assert n == 6 and [keys for _, keys in read] == [64, 31, 10]
    assert [rows.tolist() for rows, _ in read] == [[0, 1, 2], [5], [3, 4]]
    assert gathered == 3 * 64 + 32 + 2 * 16


def test_block_allocator_hands_out_the_lowest_free_blocks_and_clears_each_once():
    from actors.engine.blocks import BlockAllocator

    cleared: list[tuple[int, int]] = []
    pool = BlockAllocator(6, lambda start, stop: cleared.append((start, stop)))
    first = pool.take(3)
    assert first == [1, 2, 3] and cleared == [(1, 4)] and pool.free == 3
    pool.give([2])
    assert pool.take(2) == [2, 4] and cleared == [(1, 4), (4, 5)]  # block 2 reused without clearing again
    assert pool.used == 4 and pool.peak_used == 4
    with pytest.raises(ValueError, match="asked for 3 KV blocks, 2 free of 6"):
        pool.take(3)
    pool.give([1, 2, 3, 4])
    assert pool.free == 6 and pool.peak_used == 4


def _small_pool_plan(blocks: int, slots: int = 4):
    from actors.engine.memory import SlotPlan

    return SlotPlan(slots=slots, slot_tokens=64 + 48, max_new_tokens=48, prefill_chunk=256, kv_bytes=0,
                    buffer_bytes=0, reserve_bytes=0, budget_bytes=0, blocks=blocks, block_size=16)  # fmt: skip


@pytest.mark.parametrize("check_every", [1, 4])
def test_preempted_rows_resume_with_the_codes_they_would_have_produced(tiny_model, tiny_tokenizer, check_every):
    """A pool of 9 blocks (one full row is 7) for 8 rows that grow to ~4 blocks each: rows are admitted while
    blocks last, the latest admitted are preempted when the running ones grow, recomputed and resumed. Every
    row's codes equal the row generated alone; the pool is never exceeded (the allocator refuses) and is whole
    again at the end."""
    prompts = _prompts(tiny_tokenizer, 8)
    params = [SamplingParams(temperature=0.7, max_new_tokens=48, min_new_tokens=40, seed=i) for i in range(8)]
    batcher = ContinuousBatcher(tiny_model, _small_pool_plan(9), tiny_tokenizer.spk_emb_id, check_every=check_every)
    for i, (prompt, p) in enumerate(zip(prompts, params, strict=True)):
        batcher.submit(i, prompt, p)
    rows = {}
    while batcher.busy:
        rows.update((r.key, (r.codes.clone(), r.hidden.clone(), r.finished)) for r in batcher.step())
    stats = batcher.stats
    assert sorted(rows) == list(range(8))
    assert stats.preemptions >= 2 and stats.recomputed_tokens > 0, stats
    assert stats.admitted == 8 + stats.preemptions
    assert batcher.kv.allocator.free == stats.blocks_free == 9 and stats.peak_blocks_used <= 9
    assert stats.max_concurrent >= 2
    for i, fresh in enumerate(generate(tiny_model, prompts, params, tiny_tokenizer.spk_emb_id)):
        codes, hidden, finished = rows[i]
        assert torch.equal(fresh.codes, codes), f"row {i} changed after a preemption"
        assert finished == fresh.finished
        torch.testing.assert_close(fresh.hidden, hidden, rtol=1e-4, atol=1e-4)


def test_a_row_waits_until_the_pool_has_room_for_its_prompt_and_look_ahead(tiny_model, tiny_tokenizer):
    """Admission asks for the blocks of the prompt plus `lookahead_tokens`: with 7 blocks, a row of 10 prompt tokens
    (3 blocks with its 32-token look-ahead) runs while a 60-token one (6 blocks) waits, then runs after."""
    batcher = ContinuousBatcher(tiny_model, _small_pool_plan(7), tiny_tokenizer.spk_emb_id)
    batcher.submit("short", CodePrompt(list(range(1, 11))), SamplingParams(max_new_tokens=8, min_new_tokens=8))
    batcher.submit("long", CodePrompt(list(range(1, 61))), SamplingParams(max_new_tokens=8, min_new_tokens=8))
    batcher.step()
    assert [o.key for o in batcher.scheduler.owner if o is not None] == ["short"] and batcher.queued_rows == 1
    assert batcher.kv.allocator.used == 1  # only the prompt's block is taken; the look-ahead is room, not taken
    finished = [r.key for r in batcher.run()]
    assert finished == ["short", "long"] and batcher.stats.preemptions == 0


def _grouped_against_masked(model, device: str) -> None:
    from actors.model.gpt import PagedKVCache

    config = model.config.gpt
    dtype = model.embed.emb_text.weight.dtype
    cache = PagedKVCache(config, 40, 4, device, dtype)
    generator = torch.Generator().manual_seed(0)
    for tensor in (*cache.keys, *cache.values):
        tensor.copy_(torch.randn(tensor.shape, generator=generator))
    tables = torch.randperm(39, generator=generator)[:36].add(1).view(4, 9).to(device)
    positions = torch.tensor([[33], [5], [30], [12]], device=device)
    embeds = torch.randn(4, 1, config.hidden_size, generator=generator).to(device, dtype)
    groups = [(torch.tensor([0, 2], device=device), 34), (torch.tensor([3], device=device), 13)]
    groups.append((torch.tensor([1], device=device), 6))
    with torch.inference_mode():
        masked = model.gpt(embeds, positions, cache, tables, [(None, 34)])
        grouped = model.gpt(embeds, positions, cache, tables, groups)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(grouped, masked, rtol=tolerance, atol=tolerance)


def test_read_groups_give_the_masked_single_group_result(tiny_model):
    """Per-row attention lengths against the masked reference: the same rows and cache read in groups, each up to
    its own longest row, or as one group up to the longest of all, give the same hidden states."""
    _grouped_against_masked(tiny_model, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_read_groups_on_cuda_give_the_masked_single_group_result(tiny_checkpoint, dtype):
    """The CUDA attention (scaled_dot_product_attention over each group's gathered blocks) against one masked group."""
    from actors.checkpoint import load_model

    _grouped_against_masked(load_model(tiny_checkpoint / "asset", device="cuda", dtype=dtype), "cuda")


@pytest.mark.gpu
def test_preempted_rows_on_cuda_resume_with_the_codes_they_would_have_produced(tiny_checkpoint):
    """The preemption path on CUDA (check_every 8, as the replica runs it there), float32 with TF32 off."""
    from actors.checkpoint import load_model
    from actors.tokenizer import TextTokenizer

    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        model = load_model(tiny_checkpoint / "asset", device="cuda", dtype=torch.float32)
        tokenizer = TextTokenizer(tiny_checkpoint / "asset" / "tokenizer", 21178)
        prompts = _prompts(tokenizer, 8)
        params = [SamplingParams(temperature=0.7, max_new_tokens=48, min_new_tokens=40, seed=i) for i in range(8)]
        batcher = ContinuousBatcher(model, _small_pool_plan(9), tokenizer.spk_emb_id, check_every=8)
        for i, (prompt, p) in enumerate(zip(prompts, params, strict=True)):
            batcher.submit(i, prompt, p)
        rows = {r.key: r.codes.clone() for r in batcher.run()}
        assert batcher.stats.preemptions >= 2
        for i, fresh in enumerate(generate(model, prompts, params, tokenizer.spk_emb_id)):
            assert torch.equal(fresh.codes, rows[i]), f"row {i} changed after a preemption on CUDA"
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


@settings(max_examples=30, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(
    pool=st.integers(min_value=7, max_value=14),
    slots=st.integers(min_value=1, max_value=6),
    check_every=st.sampled_from([1, 3]),
    rows=st.lists(st.tuples(st.integers(1, 60), st.integers(8, 48)), min_size=1, max_size=8),
)
def test_every_row_gets_its_own_codes_whatever_the_pool(tiny_model, tiny_tokenizer, pool, slots, check_every, rows):
    """The invariant behind paging, over generated pools (from one full row up), slot counts, host-check intervals
    and rows (prompt tokens, new tokens): every row finishes once, with the codes it gets alone; the pool never
    goes over (the allocator refuses) and is whole again at the end."""
    prompts = [CodePrompt([1 + (7 * i + j) % 500 for j in range(length)]) for i, (length, _) in enumerate(rows)]
    params = [SamplingParams(temperature=0.7, max_new_tokens=n, min_new_tokens=n // 2, seed=i) for i, (_, n) in
              enumerate(rows)]  # fmt: skip
    batcher = ContinuousBatcher(tiny_model, _small_pool_plan(pool, slots), tiny_tokenizer.spk_emb_id, check_every)
    for i, (prompt, p) in enumerate(zip(prompts, params, strict=True)):
        batcher.submit(i, prompt, p)
    got: dict[int, torch.Tensor] = {}
    while batcher.busy:
        for row in batcher.step():
            assert row.key not in got, f"row {row.key} finished twice"
            got[row.key] = row.codes.clone()
    assert sorted(got) == list(range(len(rows)))
    assert batcher.kv.allocator.free == pool and batcher.stats.peak_blocks_used <= pool
    for i, fresh in enumerate(generate(tiny_model, prompts, params, tiny_tokenizer.spk_emb_id)):
        assert torch.equal(fresh.codes, got[i]), f"row {i} of {rows} changed (pool {pool}, slots {slots})"
