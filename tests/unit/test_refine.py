"""The refine-text stage (upstream's `_refine_text`) riding the continuous batcher: text rows share decode steps with
each other and with code rows, each row's result is independent of its batch, the text lane bounds how many run
at once, preempted text rows resume exactly, refine-only returns text without audio, and the options parse with
errors that name the row. Parity of the refined ids and codes with upstream is tests/unit/test_parity.py's."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from actors.engine.batcher import ContinuousBatcher
from actors.engine.memory import SlotPlan, plan_slots
from actors.engine.params import REFINE_PARAMS
from actors.engine.prompt import CodePrompt
from actors.engine.sampling import SamplingParams
from actors.model.config import ModelConfig
from actors.requests import RefineOptions, SynthesisRequest, refine_from_field
from actors.text import decorate, refine_prompt
from actors.validation import RequestError

TEXTS = [
    "hello world, this is a quick test.",
    "你好，欢迎使用语音合成。",
    "the quick brown fox jumps over the lazy dog.",
    "one two three.",
    "good morning, the road is clear.",
    "今天天气很好，我们去公园散步吧。",
    "a somewhat longer sentence, so that this row needs more steps than the others.",
    "short.",
]


def _text_rows(tokenizer, texts=TEXTS, prompt: str = "") -> list[CodePrompt]:
    return [CodePrompt(tokenizer.encode(refine_prompt(t, prompt))) for t in texts]


def _run(batcher: ContinuousBatcher) -> dict:
    out = {}
    while batcher.busy:
        out.update((r.key, r.codes[:, 0].clone()) for r in batcher.step())
    return out


def test_refine_rows_share_decode_steps_and_each_is_the_same_alone(tiny_model, tiny_tokenizer):
    """Eight refine rows in one batcher take as many decode steps as the longest of them (asserted from the engine's
    counters), and each row's tokens equal the row refined alone (its own seeded stream)."""
    plan = plan_slots(ModelConfig.from_name("tiny"), torch.float32, 256 << 20, 128, 384, max_slots=8)
    assert plan.text_slots >= 2
    params = [dataclasses.replace(REFINE_PARAMS, seed=i) for i in range(8)]
    plan = dataclasses.replace(plan, text_slots=8)
    together = ContinuousBatcher(tiny_model, plan, tiny_tokenizer.spk_emb_id, text_eos_id=tiny_tokenizer.eos_id)
    for i, (prompt, p) in enumerate(zip(_text_rows(tiny_tokenizer), params, strict=True)):
        together.submit(i, prompt, p, text=True)
    batch = _run(together)
    stats = together.stats
    lengths = [len(batch[i]) for i in range(8)]
    assert stats.max_concurrent == 8 and stats.text_row_steps >= sum(lengths)
    assert stats.steps <= max(lengths) + 1 < sum(lengths), (stats.steps, lengths)  # +1: the step sampling [Ebreak]
    assert len(set(lengths)) > 2
    for i, (prompt, p) in enumerate(zip(_text_rows(tiny_tokenizer), params, strict=True)):
        alone = ContinuousBatcher(tiny_model, plan, tiny_tokenizer.spk_emb_id, text_eos_id=tiny_tokenizer.eos_id)
        alone.submit(i, prompt, p, text=True)
        assert torch.equal(_run(alone)[i], batch[i]), f"row {i} refined differently inside the batch"


def test_code_rows_are_unchanged_by_refine_rows_in_the_same_steps(tiny_model, tiny_tokenizer):
    """Code rows and text rows in one forward: the code rows' codes are what they are without text rows around."""
    plan = plan_slots(ModelConfig.from_name("tiny"), torch.float32, 256 << 20, 128, 96, max_slots=8)
    code_prompts = [CodePrompt(tiny_tokenizer.encode(decorate(t))) for t in TEXTS[:4]]
    code_params = [SamplingParams(temperature=0.3, max_new_tokens=48, min_new_tokens=24, seed=i) for i in range(4)]

    def codes(with_text: bool):
        batcher = ContinuousBatcher(tiny_model, plan, tiny_tokenizer.spk_emb_id, text_eos_id=tiny_tokenizer.eos_id)
        for i, (prompt, p) in enumerate(zip(code_prompts, code_params, strict=True)):
            batcher.submit(("code", i), prompt, p)
        if with_text:
            for i, prompt in enumerate(_text_rows(tiny_tokenizer, TEXTS[4:])):
                batcher.submit(
                    ("text", i), prompt, dataclasses.replace(REFINE_PARAMS, seed=i, max_new_tokens=64), text=True
                )
        rows = {}
        while batcher.busy:
            rows.update((r.key, r.codes.clone()) for r in batcher.step())
        return rows, batcher.stats

    alone, _ = codes(False)
    mixed, stats = codes(True)
    assert stats.shared_steps > 0 and stats.text_row_steps > 0
    for i in range(4):
        assert torch.equal(alone[("code", i)], mixed[("code", i)]), f"code row {i} changed next to refine rows"


def test_eager_steps_sample_any_number_of_refine_rows_a_lane_at_a_time(tiny_model, tiny_tokenizer):
    """Eager steps take every refine row a slot is free for and sample them `plan.text_slots` at a time (the memory
    plan's reserve): six rows with a lane of 2 run together, three chunks per step, each row as it is alone."""
    plan = plan_slots(ModelConfig.from_name("tiny"), torch.float32, 256 << 20, 128, 96, max_slots=8)
    plan = dataclasses.replace(plan, text_slots=2)
    params = [dataclasses.replace(REFINE_PARAMS, seed=i, max_new_tokens=40) for i in range(6)]
    batcher = ContinuousBatcher(tiny_model, plan, tiny_tokenizer.spk_emb_id, text_eos_id=tiny_tokenizer.eos_id)
    for i, (prompt, p) in enumerate(zip(_text_rows(tiny_tokenizer, TEXTS[:6]), params, strict=True)):
        batcher.submit(i, prompt, p, text=True)
    batcher.step()
    assert sum(1 for o in batcher.scheduler.owner if o is not None and o.text) == 6
    assert [len(rows) for rows in batcher._plan_reads(1)[3]] == [2, 2, 2]
    together = _run(batcher)
    for i, (prompt, p) in enumerate(zip(_text_rows(tiny_tokenizer, TEXTS[:6]), params, strict=True)):
        alone = ContinuousBatcher(tiny_model, plan, tiny_tokenizer.spk_emb_id, text_eos_id=tiny_tokenizer.eos_id)
        alone.submit(i, prompt, p, text=True)
        assert torch.equal(_run(alone)[i], together[i]), f"row {i} changed when sampled in lane-sized chunks"


def test_a_compiled_step_keeps_refine_rows_to_its_lane_and_code_rows_pass_waiting_ones(tiny_model, tiny_tokenizer):
    """A compiled step has one shape for text rows (the lane, padded): at most `plan.text_slots` run at once, and a
    code row queued behind waiting refine rows is admitted at once. (The admission and read plan of a compiled
    batcher, run through the eager step: compiling costs tens of seconds here; tests/unit/test_compile.py compiles it.)"""
    plan = plan_slots(ModelConfig.from_name("tiny"), torch.float32, 256 << 20, 128, 96, max_slots=8)
    plan = dataclasses.replace(plan, text_slots=2)
    batcher = ContinuousBatcher(tiny_model, plan, tiny_tokenizer.spk_emb_id, text_eos_id=tiny_tokenizer.eos_id)
    batcher.compile = "inductor"  # the compiled batcher's admission and read plan; the step stays eager
    for i, prompt in enumerate(_text_rows(tiny_tokenizer, TEXTS[:6])):
        batcher.submit(("text", i), prompt, dataclasses.replace(REFINE_PARAMS, seed=i, max_new_tokens=40), text=True)
    batcher.submit(("code", 0), CodePrompt(tiny_tokenizer.encode(decorate("hi."))), SamplingParams(max_new_tokens=8))
    batcher.step()
    running = [o.key for o in batcher.scheduler.owner if o is not None]
    assert sorted(running) == [("code", 0), ("text", 0), ("text", 1)]
    most, finished = 0, []
    while batcher.busy:
        most = max(most, sum(1 for o in batcher.scheduler.owner if o is not None and o.text))
        finished += [r.key for r in batcher.step()]
    assert most == 2 and len(finished) == 7


def test_a_preempted_refine_row_resumes_with_the_tokens_it_would_have_produced(tiny_model, tiny_tokenizer):
    """A pool too small for every refine row at its full length: the latest admitted are preempted, recomputed
    (prompt + their tokens so far, through the text embedding) and resumed, each with its uninterrupted tokens."""
    plan = SlotPlan(slots=4, slot_tokens=64 + 48, max_new_tokens=48, prefill_chunk=256, kv_bytes=0, buffer_bytes=0,
                    reserve_bytes=0, budget_bytes=0, blocks=9, block_size=16, text_slots=4)  # fmt: skip
    prompts = _text_rows(tiny_tokenizer, TEXTS[:6])
    params = [dataclasses.replace(REFINE_PARAMS, seed=i, max_new_tokens=48, min_new_tokens=40) for i in range(6)]
    batcher = ContinuousBatcher(tiny_model, plan, tiny_tokenizer.spk_emb_id, text_eos_id=tiny_tokenizer.eos_id)
    for i, (prompt, p) in enumerate(zip(prompts, params, strict=True)):
        batcher.submit(i, prompt, p, text=True)
    squeezed = _run(batcher)
    assert batcher.stats.preemptions >= 1, batcher.stats
    roomy = plan_slots(ModelConfig.from_name("tiny"), torch.float32, 256 << 20, 64, 48, max_slots=8)
    for i, (prompt, p) in enumerate(zip(prompts, params, strict=True)):
        alone = ContinuousBatcher(tiny_model, roomy, tiny_tokenizer.spk_emb_id, text_eos_id=tiny_tokenizer.eos_id)
        alone.submit(i, prompt, p, text=True)
        assert torch.equal(_run(alone)[i], squeezed[i]), f"refine row {i} changed after a preemption"


def test_a_batcher_without_a_text_eos_refuses_text_rows(tiny_model, tiny_tokenizer):
    plan = plan_slots(ModelConfig.from_name("tiny"), torch.float32, 64 << 20, 64, 48, max_slots=2)
    batcher = ContinuousBatcher(tiny_model, plan, tiny_tokenizer.spk_emb_id)
    with pytest.raises(ValueError, match="text_eos_id"):
        batcher.submit(0, CodePrompt([1, 2]), REFINE_PARAMS, text=True)


def test_the_replica_refines_by_default_and_refine_only_returns_text(synthesizer):
    """Through the public API: refine is on by default (upstream's default), the spoken text is the refined text,
    its code stage speaks it; refine-only gives the same refined text and no audio; off speaks the text as is."""
    base = SynthesisRequest(id="r", text="Call me at 555-1234 today.", params=SamplingParams(seed=3, max_new_tokens=64))
    before = synthesizer.stats.refined_segments
    default = synthesizer.synthesize([base])[0]
    assert default.ok and default.audio is not None and default.audio.size > 0
    assert synthesizer.stats.refined_segments == before + 1
    only = synthesizer.synthesize([dataclasses.replace(base, refine=RefineOptions(only=True))])[0]
    assert only.ok and only.audio is None and only.codes is None and only.spoken_text == default.spoken_text
    off = synthesizer.synthesize([dataclasses.replace(base, refine=RefineOptions(enabled=False))])[0]
    assert off.spoken_text == "Call me at five five five, one two three four today."
    assert default.spoken_text != off.spoken_text  # the random model's refinement differs from its input


def test_refined_text_is_the_same_alone_and_in_a_batch_of_eight(synthesizer):
    requests = [
        SynthesisRequest(id=f"r{i}", text=t, params=SamplingParams(seed=i, max_new_tokens=32), refine=RefineOptions(only=True))
        for i, t in enumerate(TEXTS)
    ]  # fmt: skip
    batch = synthesizer.synthesize(requests)
    assert all(r.ok for r in batch) and len({r.spoken_text for r in batch}) == 8
    for request, together in zip(requests[::3], batch[::3], strict=True):
        assert synthesizer.synthesize([request])[0].spoken_text == together.spoken_text


def test_refine_options_from_row_fields_name_the_row():
    default = RefineOptions()
    assert refine_from_field("t.jsonl:1", None, default) == default
    assert refine_from_field("t.jsonl:1", False, default).enabled is False
    custom = refine_from_field(
        "t.jsonl:1", {"prompt": "[oral_2]", "temperature": 0.5, "seed": 3, "only": True}, default
    )
    assert (custom.prompt, custom.temperature, custom.seed, custom.only) == ("[oral_2]", 0.5, 3, True)
    assert custom.params(row_seed=9).seed == 3 and default.params(row_seed=9).seed != 9  # its own stream
    assert default.params(0, room=100).max_new_tokens == 100 and default.params(0).max_new_tokens == 384
    for value, message in [
        ("yes", "refine must be true, false or an object"),
        ({"temprature": 0.5}, "unknown keys \\['temprature'\\]"),
        ({"top_p": 2.0}, "top_p must be in"),
        ({"seed": "x"}, "refine.seed must be a number"),
        ({"only": 1}, "refine.only must be true or false"),
    ]:
        with pytest.raises(RequestError, match=f"t.jsonl:4: .*{message}"):
            refine_from_field("t.jsonl:4", value, default)


def test_cancelling_a_request_while_it_refines_drops_its_refine_row_and_its_code_stage(synthesizer):
    """A caller that goes away mid-refine: its text row leaves the batcher and its pending code stage is forgotten
    (nothing is queued for it when the refine would have finished)."""
    request = SynthesisRequest(id="gone", text="a caller that goes away.", params=SamplingParams(seed=1))
    results, segments = synthesizer.prepare([request])
    assert results[0].ok and segments[0].refine is not None
    synthesizer.submit(segments[0], ("call", 0, 0))
    synthesizer.pump()
    assert synthesizer.busy
    assert synthesizer.cancel(lambda key: key[0] == "call") == 1
    assert not synthesizer.busy and not synthesizer.refine._waiting and not synthesizer.refine._refined
