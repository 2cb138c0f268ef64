"""The half-precision path (float16 is the default on CUDA) and the agreement measure, on the CPU.

No GPU runs in CI, so these run the float16 code path on the CPU: a dtype bug (a float32 tensor meeting a float16
weight, sampling on half-precision logits, a half-precision waveform) fails here instead of on the first GPU day.
The agreement numbers that count for deployment come from `benchmarks/agreement.py` on a CUDA GPU.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from actors.engine.sampling import SamplingParams
from actors.replica import Synthesizer
from actors.requests import RefineOptions, SynthesisRequest, SynthesisResult
from benchmarks.agreement_measures import compare, forced_logits, snr_db, teacher_forced

NO_REFINE = RefineOptions(enabled=False)  # the code stage in each precision (the refine stage is its own test)

TEXTS = [
    "Hello world.",
    "The quick brown fox jumps over the lazy dog.",
    "Speech synthesis at scale needs batching.",
    "Short one.",
    "你好。",
    "今天天气很好，我们去公园散步吧。",
    "Numbers like 42 and 7 are read out.",
    "Good morning, the road is clear.",
]


def _requests() -> list[SynthesisRequest]:
    return [
        SynthesisRequest(
            id=f"r{i}",
            text=t,
            params=SamplingParams(temperature=0.3, min_new_tokens=8, max_new_tokens=40, seed=i),
            refine=NO_REFINE,
        )
        for i, t in enumerate(TEXTS)
    ]


def test_float16_synthesis_follows_float32_and_samples_from_float32_logits(tiny_checkpoint, monkeypatch):
    import actors.engine.backend as batcher

    seen: list[torch.dtype] = []
    original = batcher.process_logits

    def spy(logits, *args, **kwargs):
        seen.append(logits.dtype)
        return original(logits, *args, **kwargs)

    monkeypatch.setattr(batcher, "process_logits", spy)
    kwargs = {"device": "cpu", "max_new_tokens": 48, "max_prompt_tokens": 64, "budget_mib": 64}
    reference = Synthesizer(model=str(tiny_checkpoint), dtype="float32", **kwargs).synthesize(_requests())
    half = Synthesizer(model=str(tiny_checkpoint), dtype="float16", **kwargs)
    assert half.model.embed.emb_text.weight.dtype == torch.float16  # (norms stay float32)
    seen.clear()
    results = half.synthesize(_requests())

    assert [r.error for r in results] == [None] * len(TEXTS)
    assert seen and set(seen) == {torch.float32}, "logits must reach sampling in float32"
    assert all(r.audio.dtype == np.float32 and np.isfinite(r.audio).all() for r in results)
    agreement = compare(reference, results)
    # Measured on this tiny random model: 7 of 8 rows identical, SNR ~50 dB. Half precision may flip a sample and
    # let a row diverge, but most rows must follow float32 exactly and their audio must be close.
    assert agreement.identical_rows >= 6, agreement.to_dict()
    assert agreement.code_agreement >= 0.8, agreement.to_dict()
    assert min(agreement.snr_db) >= 35.0, agreement.to_dict()


def test_teacher_forced_logits_line_up_and_float16_keeps_the_top_code(tiny_checkpoint):
    """Both precisions read float32's codes as their history. Under deterministic sampling without a repetition
    penalty float32's own top-1 must be the code it generated at every position (so the positions line up), and
    float16's top-1 must almost always be the same (measured: 0.996, mean |logit difference| 0.002)."""
    kwargs = {"device": "cpu", "max_new_tokens": 48, "max_prompt_tokens": 64, "budget_mib": 64}
    params = [
        SamplingParams(temperature=1e-6, repetition_penalty=1.0, min_new_tokens=8, max_new_tokens=40, seed=i)
        for i in range(len(TEXTS))
    ]
    requests = [
        SynthesisRequest(id=f"r{i}", text=t, params=p, refine=NO_REFINE)
        for i, (t, p) in enumerate(zip(TEXTS, params, strict=True))
    ]
    reference = Synthesizer(model=str(tiny_checkpoint), dtype="float32", **kwargs)
    results = reference.synthesize(requests)
    assert [r.error for r in results] == [None] * len(TEXTS)
    eos = reference.config.gpt.eos_code
    ref_logits = forced_logits(reference, requests, results)

    itself = teacher_forced(ref_logits, ref_logits, results, eos)
    assert (itself["teacher_forced_rows"], itself["teacher_forced_top1_agreement"]) == (len(TEXTS), 1.0)
    assert itself["teacher_forced_mean_abs_logit_diff"] == 0.0
    assert itself["teacher_forced_reference_top1_is_code"] == 1.0

    half = Synthesizer(model=str(tiny_checkpoint), dtype="float16", **kwargs)
    got = teacher_forced(ref_logits, forced_logits(half, requests, results), results, eos)
    assert got["teacher_forced_top1_agreement"] >= 0.98, got
    assert 0 < got["teacher_forced_mean_abs_logit_diff"] < 0.02, got


def _result(row_id: str, codes: list[list[int]], audio: list[float]) -> SynthesisResult:
    return SynthesisResult(
        id=row_id, text="t", audio=np.asarray(audio, np.float32), codes=np.asarray(codes, np.int64).reshape(-1, 2)
    )


def test_agreement_counts_identical_rows_first_differences_and_snr():
    reference = [
        _result("a", [[1, 2], [3, 4]], [1.0, -1.0, 0.5]),
        _result("b", [[1, 2], [3, 4], [5, 6]], [1.0, 1.0]),
        _result("c", [[7, 7]], [0.2]),
    ]
    other = [
        _result("a", [[1, 2], [3, 4]], [1.0, -1.0, 0.5]),  # identical codes and audio: SNR inf
        _result("b", [[1, 2], [3, 9], [5, 6]], [1.0, 1.0]),  # differs at frame 1 (one of two codebooks)
        _result("c", [[7, 7], [8, 8]], [0.2, 0.0]),  # longer: differs from frame 1 on
    ]
    got = compare(reference, other)
    assert (got.rows, got.identical_rows) == (3, 1)
    assert got.first_difference == [None, 1, 1]
    assert got.positions == 2 * 2 + 3 * 2 + 2 * 2
    assert got.matching_positions == 4 + 5 + 2
    assert got.snr_db == [math.inf]
    assert got.to_dict()["waveform_rows_bit_identical"] == 1


def test_snr_and_refusals():
    ref = np.array([1.0, -1.0, 1.0, -1.0], np.float32)
    assert snr_db(ref, ref * 1.01) == pytest.approx(40.0, abs=1e-3)  # error 1% of the signal amplitude
    with pytest.raises(ValueError, match="same length"):
        snr_db(ref, ref[:3])
    with pytest.raises(ValueError, match="same requests"):
        compare([_result("a", [[1, 2]], [1.0])], [])
    with pytest.raises(ValueError, match="same order"):
        compare([_result("a", [[1, 2]], [1.0])], [_result("b", [[1, 2]], [1.0])])
    failed = SynthesisResult(id="a", text="t", error="boom")
    with pytest.raises(ValueError, match="failed in one run"):
        compare([_result("a", [[1, 2]], [1.0])], [failed])
