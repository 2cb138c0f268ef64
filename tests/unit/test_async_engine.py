"""AsyncSynthesizer: concurrent callers share one engine's steps and get exactly the synchronous results."""

from __future__ import annotations

import asyncio

import numpy as np

from actors.async_engine import AsyncSynthesizer
from actors.engine.sampling import SamplingParams
from actors.replica import Synthesizer
from actors.requests import RefineOptions, SynthesisRequest


def _requests(prefix: str, n: int) -> list[SynthesisRequest]:
    return [
        SynthesisRequest(id=f"{prefix}{i}", text=f"call {prefix} row {i} says hello.", params=SamplingParams(min_new_tokens=30, max_new_tokens=40, seed=i))
        for i in range(n)
    ]  # fmt: skip


def test_concurrent_calls_share_steps_and_match_sync(tiny_checkpoint, tmp_path):
    synth = Synthesizer(
        model=str(tiny_checkpoint),
        device="cpu",
        budget_mib=64,
        max_slots=16,
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
        budget_mib=64,
        max_slots=4,
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


def _engine_synth(tiny_checkpoint, tmp_path, slots: int = 8) -> Synthesizer:
    return Synthesizer(
        model=str(tiny_checkpoint),
        device="cpu",
        budget_mib=64,
        max_slots=slots,
        max_new_tokens=160,
        max_prompt_tokens=128,
        max_segment_tokens=24,
        stream_chunk_steps=5,
        cache_dir=tmp_path,
    )


def test_streamed_requests_join_to_the_one_shot_audio(tiny_checkpoint, tmp_path):
    """Several streams at once, one of them long enough to be split into segments: pieces arrive in order
    while frames are generated, and each stream joined equals the same request synthesised in one piece."""
    synth = _engine_synth(tiny_checkpoint, tmp_path)
    long_text = " ".join(f"sentence number {w} is here." for w in ("one", "two", "three", "four", "five", "six"))
    requests = [
        SynthesisRequest(id="long", text=long_text, params=SamplingParams(min_new_tokens=60, max_new_tokens=80, seed=3)),
        SynthesisRequest(id="short", text="a short one.", params=SamplingParams(min_new_tokens=90, max_new_tokens=120, seed=4)),
    ]  # fmt: skip
    expected = synth.synthesize(requests)
    assert expected[0].segments > 1, "the long text must span several segments to test their ordering"
    engine = AsyncSynthesizer(synth)

    async def consume(request):
        stream = await engine.open_stream(request)
        pieces = [piece async for piece in stream]
        return pieces, stream.result

    async def main():
        return await asyncio.gather(*(consume(r) for r in requests))

    try:
        streamed = asyncio.run(main())
    finally:
        engine.close()
    for want, (pieces, result) in zip(expected, streamed, strict=True):
        assert len(pieces) > 2, f"{want.id}: expected several pieces while generating, got {len(pieces)}"
        joined = np.concatenate(pieces)
        assert joined.shape == want.audio.shape
        error = np.linalg.norm(joined - want.audio) / np.linalg.norm(want.audio)
        assert error < 1e-3, f"{want.id}: joined stream differs from one-shot audio (rel err {error:.2e})"
        np.testing.assert_array_equal(result.codes, want.codes)
        assert result.segments == want.segments


def test_invalid_stream_raises_and_cancelled_callers_free_their_slots(tiny_checkpoint, tmp_path):
    from actors.validation import RequestError

    synth = _engine_synth(tiny_checkpoint, tmp_path, slots=4)
    engine = AsyncSynthesizer(synth)
    slow = SamplingParams(min_new_tokens=150, max_new_tokens=160)
    code_only = RefineOptions(enabled=False)  # rows that are mid-generation of codes when cancelled

    async def main():
        try:
            await engine.open_stream(SynthesisRequest(id="bad", text="   "))
        except RequestError as err:
            bad = str(err)
        # Four long requests fill every slot; abandoning them must hand the slots to the next caller at once.
        stuck = [
            asyncio.ensure_future(
                engine.synthesize([SynthesisRequest(id=f"s{i}", text="long wait.", params=slow, refine=code_only)])
            )
            for i in range(4)
        ]
        stream = await engine.open_stream(
            SynthesisRequest(id="st", text="streamed then dropped.", params=slow, refine=code_only)
        )
        while engine.stats()["running_rows"] < 4:  # cancel while they are mid-generation, not after
            await asyncio.sleep(0.005)
        assert engine.stats()["finished"] == 0
        for task in stuck:
            task.cancel()
        stream.close()
        await asyncio.gather(*stuck, return_exceptions=True)
        quick = await asyncio.wait_for(engine.synthesize(_requests("q", 1)), timeout=60)
        return bad, quick

    try:
        bad, quick = asyncio.run(main())
    finally:
        engine.close()
    assert bad == "text is empty"
    assert quick[0].error is None and quick[0].audio.size > 0
    stats = synth.batcher.stats
    assert stats.cancelled == 5, f"4 cancelled calls + 1 closed stream must drop 5 rows, dropped {stats.cancelled}"
    # only the quick request may run to the end: its refine-text row, then its code row
    assert stats.finished == 2 and synth.stats.refined_segments == 1
