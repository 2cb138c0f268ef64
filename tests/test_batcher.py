"""The continuous batcher: budget arithmetic, measured memory, slot refill, occupancy, per-row independence."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from actors.engine.batcher import ContinuousBatcher, plan_slots, slot_bytes
from actors.engine.generate import CodePrompt, generate
from actors.engine.sampling import SamplingParams
from actors.model.config import ModelConfig
from actors.replica import SynthesisRequest, Synthesizer
from actors.text import decorate

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
    plan = plan_slots(full, torch.float16, 40 << 30, 512, 2048)
    kv, buffers = slot_bytes(full.gpt, torch.float16, 2560, 2048)
    assert kv == 61_440 * 2560
    assert plan.kv_bytes == plan.slots * kv and plan.buffer_bytes == plan.slots * buffers
    assert plan.planned_bytes <= 40 << 30
    # one more slot would not fit
    assert (plan.slots + 1) * (kv + buffers) + plan.reserve_bytes > 40 << 30


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
    finished = [row.key for row in batcher.run()]
    assert sorted(finished) == list(range(40))
    assert batcher.stats.max_concurrent == 8
    # steady state: every step before the queue drained had all 8 slots busy
    drained = batcher.stats.history.index(max(batcher.stats.history)) if batcher.stats.history else 0
    assert drained == 0
    assert batcher.stats.occupancy >= 0.85, batcher.stats.occupancy


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


def _peak_transient_bytes(fn) -> tuple[int, object]:
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    live = peak = 0
    for event in events:
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak, result


def test_measured_memory_stays_within_the_budget(tiny_checkpoint, tmp_path):
    """Tensor accounting on CPU: preallocated cache + buffers, plus the profiler's peak of everything else."""
    budget = 48 << 20
    synth = Synthesizer(model=str(tiny_checkpoint), device="cpu", budget_bytes=budget, max_prompt_tokens=128,
                        max_new_tokens=96, max_batch_size=None, cache_dir=tmp_path)  # fmt: skip
    batcher = synth.batcher
    preallocated = sum(
        t.numel() * t.element_size()
        for t in (*batcher.cache.keys, *batcher.cache.values, batcher.codes, batcher.hidden_out, batcher.recent)
    )
    assert preallocated <= synth.plan.kv_bytes + synth.plan.buffer_bytes
    assert synth.plan.slots >= 4
    requests = [
        SynthesisRequest(id=f"r{i}", text=f"Sentence number {i} for the budget test.", params=SamplingParams(max_new_tokens=96, min_new_tokens=40, seed=i))
        for i in range(2 * synth.plan.slots)
    ]  # fmt: skip
    peak, results = _peak_transient_bytes(lambda: synth.synthesize(requests))
    assert all(r.ok for r in results)
    print(
        f"budget {budget >> 20} MiB: preallocated {preallocated / 2**20:.1f} MiB + transient peak {peak / 2**20:.1f} MiB"
    )
    assert preallocated + peak <= budget, f"{(preallocated + peak) / 2**20:.1f} MiB > {budget / 2**20:.0f} MiB"
    assert batcher.stats.max_concurrent == synth.plan.slots


@pytest.mark.gpu
@pytest.mark.parametrize("compile_mode", ["off", "cudagraphs"])
def test_cuda_peak_memory_stays_within_the_budget(tiny_checkpoint, tmp_path, compile_mode):
    """On CUDA the allocator's own peak is the measure: everything the replica allocates beyond its weights (KV
    cache, buffers, activations, decoding, CUDA-graph pools) must fit the budget."""
    budget = 256 << 20
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()  # whatever earlier tests in this process still hold
    torch.cuda.reset_peak_memory_stats()
    synth = Synthesizer(model=str(tiny_checkpoint), device="cuda", budget_bytes=budget, max_prompt_tokens=128,
                        max_new_tokens=96, cache_dir=tmp_path, compile=compile_mode)  # fmt: skip
    weights = sum(t.numel() * t.element_size() for t in (*synth.model.parameters(), *synth.model.buffers()))
    requests = [
        SynthesisRequest(id=f"r{i}", text=f"Sentence number {i} for the budget test.", params=SamplingParams(max_new_tokens=96, min_new_tokens=40, seed=i))
        for i in range(2 * synth.plan.slots)
    ]  # fmt: skip
    results = synth.synthesize(requests)
    torch.cuda.synchronize()
    assert all(r.ok for r in results)
    used = torch.cuda.max_memory_allocated() - base - weights
    assert used <= budget, f"{used / 2**20:.1f} MiB beyond the weights > the {budget >> 20} MiB budget"
    assert synth.batcher.stats.max_concurrent == synth.plan.slots


def test_rows_that_do_not_fit_a_slot_are_refused(tiny_model, tiny_tokenizer):
    plan = plan_slots(TINY, torch.float32, 64 << 20, 16, 20, max_slots=2)
    batcher = ContinuousBatcher(tiny_model, plan, tiny_tokenizer.spk_emb_id)
    with pytest.raises(ValueError, match="does not fit a slot"):
        batcher.submit(0, CodePrompt(list(range(30))), SamplingParams(max_new_tokens=10))
    with pytest.raises(ValueError, match="exceeds this engine"):
        batcher.submit(0, CodePrompt([1, 2, 3]), SamplingParams(max_new_tokens=21))


class _OpCounter(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts clones, host syncs and cross-device copies dispatched inside the block."""

    def __init__(self) -> None:
        super().__init__()
        self.clones = self.syncs = self.cross_device = self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.ops += 1
        name = func.overloadpacket.__name__
        if name == "clone":
            self.clones += 1
        if name in ("item", "_local_scalar_dense", "is_nonzero", "equal"):
            self.syncs += 1  # .item(), float(t), bool(t), torch.equal: the host waits for the device
        devices = {a.device for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)}
        if isinstance(out, torch.Tensor):
            devices.add(out.device)
        if len(devices) > 1:
            self.cross_device += 1
        return out


def _count_decode_steps(model, tokenizer, device_check: str) -> _OpCounter:
    plan = plan_slots(TINY, torch.float32, 64 << 20, 64, 40, max_slots=8)
    batcher = ContinuousBatcher(model, plan, tokenizer.spk_emb_id, check_every=4)
    for i, prompt in enumerate(_prompts(tokenizer, 8)):
        batcher.submit(i, prompt, SamplingParams(temperature=0.7, max_new_tokens=40, min_new_tokens=20, seed=i))
    batcher.step()  # admission + prefill + first block
    counter = _OpCounter()
    with torch.inference_mode(), counter:
        for _ in range(8):
            batcher._decode_step()
    return counter


def test_decode_steps_make_no_clones_no_host_syncs_and_no_device_copies(tiny_model, tiny_tokenizer):
    """On CPU a device<->host copy cannot happen, so the CPU run checks clones and host syncs (.item(), bool()).

    Cross-device copies are counted too; they can only be non-zero on a CUDA run (see the gpu-marked twin).
    """
    counter = _count_decode_steps(tiny_model, tiny_tokenizer, "cpu")
    assert counter.ops > 100, "the counter must see the decode step's ops"
    assert counter.clones == 0
    assert counter.syncs == 0
    assert counter.cross_device == 0


@pytest.mark.gpu
def test_decode_steps_on_cuda_make_no_device_host_copies(tiny_checkpoint):
    from actors.checkpoint import load_model
    from actors.tokenizer import TextTokenizer

    model = load_model(tiny_checkpoint / "asset", device="cuda", dtype=torch.float16)
    tokenizer = TextTokenizer(tiny_checkpoint / "asset" / "tokenizer", 21178)
    counter = _count_decode_steps(model, tokenizer, "cuda")
    assert counter.clones == 0 and counter.syncs == 0 and counter.cross_device == 0
