"""The decode step through torch.compile: same codes as eager, and no recompiles once the replica is warm.

CPU runs inductor (dynamic shapes); the CUDA-graph mode (bucketed shapes, replayed graphs) is the gpu-marked twin.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actors.engine.sampling import SamplingParams
from actors.replica import SynthesisRequest, Synthesizer

TEXTS = [
    "hello there.",
    "a somewhat longer sentence, so that this row needs more steps than the others.",
    "short.",
    "the fourth row is of middling length.",
    "five.",
    "six rows share the pool, and they arrive at different times.",
]


def _requests(prefix: str) -> list[SynthesisRequest]:
    return [
        SynthesisRequest(
            id=f"{prefix}{i}",
            text=text,
            params=SamplingParams(temperature=0.3, max_new_tokens=24 + 6 * i, min_new_tokens=8, seed=100 + i),
        )
        for i, text in enumerate(TEXTS)
    ]


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _check_compiled_matches_eager(tiny_checkpoint, device: str, mode: str) -> None:
    torch._dynamo.reset()
    eager = Synthesizer(model=tiny_checkpoint, device=device, max_batch_size=16, max_new_tokens=64)
    compiled = Synthesizer(model=tiny_checkpoint, device=device, max_batch_size=16, max_new_tokens=64, compile=mode)
    warm = _graphs()
    assert warm >= 1, "the replica compiles its decode step at start-up"

    # Rows arrive while others run: pool and prefix sizes change from step to step.
    results = {}
    for name, synth in (("eager", eager), ("compiled", compiled)):
        first = synth.synthesize(_requests("a")[:2])
        rest = synth.synthesize(_requests("b"))
        results[name] = first + rest
    assert _graphs() == warm, "a compiled replica must not recompile after warm-up"
    assert compiled.batcher.stats.max_concurrent > 1

    for e, c in zip(results["eager"], results["compiled"], strict=True):
        assert e.ok and c.ok, (e.error, c.error)
        np.testing.assert_array_equal(e.codes, c.codes)
        rel = np.linalg.norm(e.audio - c.audio) / np.linalg.norm(e.audio)
        assert rel < 1e-3, (e.id, rel)


@pytest.mark.slow
def test_inductor_step_matches_eager_and_never_recompiles(tiny_checkpoint):
    _check_compiled_matches_eager(tiny_checkpoint, "cpu", "inductor")


@pytest.mark.gpu
def test_cuda_graph_step_matches_eager_and_never_recompiles(tiny_checkpoint):
    _check_compiled_matches_eager(tiny_checkpoint, "cuda", "cudagraphs")


def test_cuda_graphs_need_a_cuda_device(tiny_checkpoint):
    with pytest.raises(ValueError, match="needs a CUDA device"):
        Synthesizer(model=tiny_checkpoint, device="cpu", max_batch_size=4, max_new_tokens=16, compile="cudagraphs")


def test_cuda_graph_buckets_are_few():
    """Rows go to powers of two and the attended prefix to multiples of 256 under CUDA graphs: a 344-slot pool of
    2688-token slots (the full model on 80 GB) needs at most 7 x 11 graphs."""
    from actors.engine.batcher import SlotPlan, step_shape

    plan = SlotPlan(slots=344, slot_tokens=2688, max_new_tokens=2048, prefill_chunk=256, kv_bytes=0,
                    buffer_bytes=0, reserve_bytes=0, budget_bytes=0)  # fmt: skip
    shapes = {
        step_shape(rows, tokens, plan, "cudagraphs", "cuda") for rows in range(1, 345) for tokens in range(2, 2689)
    }
    assert len({n for n, _ in shapes}) == 7 and len({k for _, k in shapes}) == 11
    assert all(n >= 8 and (kv % 256 == 0 or kv == 2688) for n, kv in shapes)
    assert step_shape(9, 300, plan, "cudagraphs", "cuda") == (16, 512)
    assert step_shape(9, 300, plan, "inductor", "cpu") == (9, 300)  # dynamic shapes: exact sizes
