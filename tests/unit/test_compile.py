"""The decode step through torch.compile: same codes as eager, and no recompiles once the replica is warm.

On CUDA, inductor (dynamic shapes) in float32 gives eager's codes; on the CPU compiling is refused (it was slower
than eager end to end). The CUDA-graph mode (bucketed shapes, replayed graphs) has two
gpu-marked twins: in float32 with TF32 off it must give eager's codes exactly; in float16, where fused kernels round
differently from eager's, it must follow eager closely (teacher-forced), record a graph for every shape bucket at
warm-up and none while serving.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from actors.engine.memory import cuda_graph_shapes
from actors.engine.sampling import SamplingParams
from actors.replica import Synthesizer
from actors.requests import RefineOptions, SynthesisRequest, SynthesisResult
from benchmarks.agreement_measures import forced_logits

TEXTS = [
    "hello there.",
    "a somewhat longer sentence, so that this row needs more steps than the others.",
    "short.",
    "the fourth row is of middling length.",
    "five.",
    "six rows share the pool, and they arrive at different times.",
]


def _requests(prefix: str, refine: bool = False) -> list[SynthesisRequest]:
    return [
        SynthesisRequest(
            id=f"{prefix}{i}",
            text=text,
            params=SamplingParams(temperature=0.3, max_new_tokens=24 + 6 * i, min_new_tokens=8, seed=100 + i),
            refine=RefineOptions(enabled=refine),
        )
        for i, text in enumerate(TEXTS)
    ]


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


@pytest.fixture
def tf32_off() -> Iterator[None]:
    """Full float32 matmuls and convolutions on CUDA (TF32 would round inputs to 10 mantissa bits)."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def _check_compiled_matches_eager(tiny_checkpoint, device: str, mode: str) -> None:
    """float32 on both sides: the compiled step must give eager's codes exactly, also for rows that go through the
    refine-text stage first (text rows in the same compiled step: a graph of its own, compiled at warm-up)."""
    torch._dynamo.reset()
    settings = dict(model=tiny_checkpoint, device=device, dtype="float32", max_slots=16, max_new_tokens=64)
    eager = Synthesizer(**settings)
    compiled = Synthesizer(**settings, compile=mode)
    warm = _graphs()
    assert warm >= 1, "the replica compiles its decode step at start-up"

    # Rows arrive while others run: pool and prefix sizes change from step to step.
    results = {}
    for name, synth in (("eager", eager), ("compiled", compiled)):
        first = synth.synthesize(_requests("a")[:2])
        rest = synth.synthesize(_requests("b"))
        refined = synth.synthesize(_requests("c", refine=True))
        results[name] = first + rest + refined
    assert _graphs() == warm, "a compiled replica must not recompile after warm-up"
    assert compiled.batcher.stats.max_concurrent > 1
    assert compiled.batcher.stats.text_steps > 0 and compiled.batcher.stats.shared_steps > 0
    for e, c in zip(results["eager"], results["compiled"], strict=True):
        assert e.spoken_text == c.spoken_text, e.id

    for e, c in zip(results["eager"], results["compiled"], strict=True):
        assert e.ok and c.ok, (e.error, c.error)
        np.testing.assert_array_equal(e.codes, c.codes)
        rel = np.linalg.norm(e.audio - c.audio) / np.linalg.norm(e.audio)
        assert rel < 1e-3, (e.id, rel)


@pytest.mark.gpu
def test_inductor_step_matches_eager_and_never_recompiles(tiny_checkpoint, tf32_off):
    _check_compiled_matches_eager(tiny_checkpoint, "cuda", "inductor")


def test_compiling_on_the_cpu_is_refused_with_what_to_do(tiny_checkpoint):
    """On the CPU the compiled step was slower than eager end to end (330 s compiling, then 0.10x), so asking for
    it is an error that says so, not a trap: at config time when the device is cpu, at start-up when auto picks it."""
    from pydantic import ValidationError

    from actors.settings import EngineSettings

    with pytest.raises(ValidationError, match="refused on the CPU"):
        EngineSettings(device="cpu", compile="inductor")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"engine.compile='inductor' is refused on the CPU.*compile: off"):
            Synthesizer(model=tiny_checkpoint, device="auto", compile="inductor")


@pytest.mark.gpu
def test_cuda_graph_step_in_float32_matches_eager_and_never_recompiles(tiny_checkpoint, tf32_off):
    _check_compiled_matches_eager(tiny_checkpoint, "cuda", "cudagraphs")


@pytest.mark.gpu
def test_cuda_graph_step_in_float16_records_every_bucket_at_warm_up_and_follows_eager(tiny_checkpoint, monkeypatch):
    """float16, the CUDA default. Warm-up records one CUDA graph per shape bucket; serving rows across several
    buckets then only replays them (no graph recorded, no recompile, no bucket skipped by inductor). Codes are not
    compared: one rounding difference flips a sample and the rows diverge from there. Instead both read the compiled
    run's own codes as their history: the code logits of the hidden states the compiled step produced must pick the
    same top-1 code as eager's at nearly every position (the bounds tests/unit/test_half_precision.py sets for float16
    against float32, which on the CPU measures 99.6%, logits 0.002 apart on average)."""
    from torch._dynamo.utils import counters

    captures = []
    capture_begin = torch.cuda.CUDAGraph.capture_begin

    def counting_capture_begin(self, *args, **kwargs):
        captures.append(1)
        return capture_begin(self, *args, **kwargs)

    monkeypatch.setattr(torch.cuda.CUDAGraph, "capture_begin", counting_capture_begin)
    torch._dynamo.reset()
    skips = counters["inductor"]["cudagraph_skips"]
    settings = dict(model=tiny_checkpoint, device="cuda", max_slots=16, max_new_tokens=320, max_prompt_tokens=64)
    eager = Synthesizer(**settings)
    compiled = Synthesizer(**settings, compile="cudagraphs")
    assert compiled.dtype == torch.float16
    buckets = cuda_graph_shapes(compiled.plan)
    assert len(buckets) == 4, buckets  # rows 8 or 16, attended prefix 256 or 384
    assert len(captures) >= len(buckets), f"warm-up recorded {len(captures)} CUDA graphs for {len(buckets)} buckets"
    graphs, recorded = _graphs(), len(captures)

    # 12 rows (more than 8: the 16-row bucket), arriving in two waves; one runs past 256 positions.
    requests = _requests("a") + _requests("b")
    requests[1].params = SamplingParams(temperature=0.3, max_new_tokens=300, min_new_tokens=280, seed=7)
    _, segments = compiled.prepare(requests)
    assert len(segments) == len(requests)
    batcher = compiled.batcher
    served: set[tuple[int, int]] = set()
    step = batcher.runner.step

    def recording_step(n: int, read: list, text: object = None) -> None:
        served.add((n, read[0][1]))  # (rows, keys) of the step's one read
        step(n, read, text)

    monkeypatch.setattr(batcher.runner, "step", recording_step)
    rows = {}
    for segment in segments[:4]:
        batcher.submit(segment.request, segment.prompt, segment.params)
    for _ in range(3):
        rows.update((r.key, (r.codes.clone(), r.hidden.clone())) for r in batcher.step())
    for segment in segments[4:]:
        batcher.submit(segment.request, segment.prompt, segment.params)
    while batcher.busy:
        rows.update((r.key, (r.codes.clone(), r.hidden.clone())) for r in batcher.step())
    assert sorted(rows) == list(range(len(requests)))
    assert len(served) > 1 and served <= set(buckets), served
    assert len(captures) == recorded, "serving recorded a CUDA graph: warm-up missed a bucket"
    assert _graphs() == graphs, "a compiled replica must not recompile after warm-up"
    assert counters["inductor"]["cudagraph_skips"] == skips, "inductor ran the step without CUDA graphs"

    along = [SynthesisResult(id=r.id, text=r.text, codes=rows[i][0].cpu().numpy()) for i, r in enumerate(requests)]
    reference = forced_logits(eager, requests, along)
    positions = matching = 0
    abs_diff = 0.0
    for i, ref in enumerate(reference):
        own = eager.model.embed.code_logits(rows[i][1]).float().cpu()
        positions += own.shape[0] * own.shape[1]
        matching += int((own.argmax(-1) == ref.argmax(-1)).sum())
        abs_diff += float((own - ref).abs().mean(-1).sum())
    assert matching / positions >= 0.98, f"teacher-forced top-1 agreement {matching / positions:.4f}"
    assert abs_diff / positions < 0.02, f"mean |logit difference| {abs_diff / positions:.5f}"


def test_cuda_graphs_need_a_cuda_device(tiny_checkpoint):
    with pytest.raises(ValueError, match="refused on the CPU"):
        Synthesizer(model=tiny_checkpoint, device="cpu", max_slots=4, max_new_tokens=16, compile="cudagraphs")


def test_cuda_graph_buckets_are_few():
    """Rows go to powers of two and the attended prefix to multiples of 256 under CUDA graphs: a 344-slot pool of
    2688-token slots (the full model on 80 GB) needs at most 7 x 11 graphs."""
    from actors.engine.memory import SlotPlan, step_shape

    plan = SlotPlan(slots=344, slot_tokens=2688, max_new_tokens=2048, prefill_chunk=256, kv_bytes=0,
                    buffer_bytes=0, reserve_bytes=0, budget_bytes=0)  # fmt: skip
    shapes = {
        step_shape(rows, tokens, plan, "cudagraphs", "cuda") for rows in range(1, 345) for tokens in range(2, 2689)
    }
    assert len({n for n, _ in shapes}) == 7 and len({k for _, k in shapes}) == 11
    assert sorted(shapes) == cuda_graph_shapes(plan)  # what a CUDA-graph replica records at warm-up
    assert all(n >= 8 and (kv % 256 == 0 or kv == 2688) for n, kv in shapes)
    assert step_shape(9, 300, plan, "cudagraphs", "cuda") == (16, 512)
    assert step_shape(9, 300, plan, "inductor", "cpu") == (9, 300)  # dynamic shapes: exact sizes
