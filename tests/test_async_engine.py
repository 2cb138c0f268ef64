"""AsyncSynthesizer: concurrent callers share one engine's steps and get exactly the synchronous results."""

from __future__ import annotations

import asyncio

import numpy as np

from actors.async_engine import AsyncSynthesizer
from actors.engine.sampling import SamplingParams
from actors.replica import SynthesisRequest, Synthesizer


def _requests(prefix: str, n: int) -> list[SynthesisRequest]:
    return [
        SynthesisRequest(id=f"{prefix}{i}", text=f"call {prefix} row {i} says hello.", params=SamplingParams(min_new_tokens=30, max_new_tokens=40, seed=i))
        for i in range(n)
    ]  # fmt: skip


def test_concurrent_calls_share_steps_and_match_sync(tiny_checkpoint, tmp_path):
    synth = Synthesizer(
        model=str(tiny_checkpoint),
        device="cpu",
        budget_bytes=64 << 20,
        max_batch_size=16,
        max_new_tokens=64,
        max_prompt_tokens=128,
        cache_dir=tmp_path,
    )
    calls = [_requests(p, 4) for p in "abc"]
    expected = [synth.synthesize(c) for c in calls]
    synth.batcher.stats = type(synth.batcher.stats)()
    engine = AsyncSynthesizer(synth)

    async def main():
        return await asyncio.gather(*(engine.synthesize(c) for c in calls))

    try:
        got = asyncio.run(main())
    finally:
        engine.close()
    for want_call, got_call in zip(expected, got, strict=True):
        for want, have in zip(want_call, got_call, strict=True):
            assert have.error is None and want.error is None
            np.testing.assert_array_equal(have.codes, want.codes)
            assert np.allclose(have.audio, want.audio, atol=1e-5)
    assert synth.batcher.stats.max_concurrent > 4, "rows of different calls must share decode steps"


def test_bad_requests_come_back_as_errors_without_stopping_the_loop(tiny_checkpoint, tmp_path):
    synth = Synthesizer(
        model=str(tiny_checkpoint),
        device="cpu",
        budget_bytes=64 << 20,
        max_batch_size=4,
        max_new_tokens=64,
        max_prompt_tokens=128,
        cache_dir=tmp_path,
    )
    engine = AsyncSynthesizer(synth)

    async def main():
        bad = await engine.synthesize([SynthesisRequest(id="x", text="")])
        good = await engine.synthesize(_requests("g", 1))
        return bad, good

    try:
        bad, good = asyncio.run(main())
    finally:
        engine.close()
    assert bad[0].error == "text is empty"
    assert good[0].error is None and good[0].audio.size > 0
