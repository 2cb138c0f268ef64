"""Engine behaviour on the tiny model: seeds, batch independence, stopping rules, KV cache, trimming, decoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.engine.generate import decode_waveforms, generate
from actors.engine.prompt import CodePrompt, prompt_embeddings
from actors.engine.sampling import SamplingBatch, SamplingParams, process_logits, sample
from actors.model.config import frames_to_samples
from actors.model.gpt import PagedKVCache
from actors.speaker import normalized_speaker, random_speaker
from actors.text import decorate

TEXTS = [
    "Hello world, this is a quick test.",
    "你好，欢迎使用语音合成。",
    "The quick brown fox jumps over the lazy dog.",
    "今天天气很好。",
    "One two three four five six seven eight nine ten, and then some more words to make it longer.",
    "Short.",
    "混合 English 和中文的句子。",
    "[laugh] thanks please.",
]


def _prompt(tokenizer, text: str, speaker_seed: int | None = None) -> CodePrompt:
    speaker = None if speaker_seed is None else normalized_speaker(random_speaker(speaker_seed, 128))
    return CodePrompt(tokenizer.encode(decorate(text, "[speed_5]", speaker is not None)), speaker)


def _params(seed: int, **kw) -> SamplingParams:
    base = {"temperature": 0.7, "top_p": 0.9, "top_k": 40, "max_new_tokens": 40}
    return SamplingParams(seed=seed, **{**base, **kw})


def test_same_seed_same_codes_and_different_seed_different_codes(tiny_model, tiny_tokenizer):
    prompt = _prompt(tiny_tokenizer, TEXTS[0])
    a = generate(tiny_model, [prompt], [_params(5)], tiny_tokenizer.spk_emb_id)[0]
    b = generate(tiny_model, [prompt], [_params(5)], tiny_tokenizer.spk_emb_id)[0]
    c = generate(tiny_model, [prompt], [_params(6)], tiny_tokenizer.spk_emb_id)[0]
    assert a.codes.shape[0] > 0
    assert torch.equal(a.codes, b.codes)
    assert not (a.codes.shape == c.codes.shape and torch.equal(a.codes, c.codes))


def test_row_alone_equals_row_in_a_batch_of_eight(tiny_model, tiny_tokenizer):
    prompts = [_prompt(tiny_tokenizer, t, speaker_seed=i if i % 2 else None) for i, t in enumerate(TEXTS)]
    params = [_params(100 + i, temperature=0.3 + 0.1 * (i % 3), top_k=10 + i) for i in range(len(TEXTS))]
    batch = generate(tiny_model, prompts, params, tiny_tokenizer.spk_emb_id)
    assert len({g.codes.shape[0] for g in batch}) > 1, "rows should stop at different steps"
    for i in (0, 3, 6):
        alone = generate(tiny_model, [prompts[i]], [params[i]], tiny_tokenizer.spk_emb_id)[0]
        assert torch.equal(alone.codes, batch[i].codes), f"row {i} changed with its batch"
        torch.testing.assert_close(alone.hidden, batch[i].hidden, rtol=1e-4, atol=1e-4)


def test_max_new_tokens_stops_a_row_and_marks_it_unfinished(tiny_model, tiny_tokenizer):
    prompt = _prompt(tiny_tokenizer, TEXTS[4])
    params = _params(1, temperature=1e-6, min_new_tokens=5, max_new_tokens=5)
    out = generate(tiny_model, [prompt], [params], tiny_tokenizer.spk_emb_id)[0]
    assert out.codes.shape == (5, 4)
    assert out.finished is False
    assert (out.codes != 625).all()


def test_min_new_tokens_masks_eos(tiny_model, tiny_tokenizer):
    prompts = [_prompt(tiny_tokenizer, t) for t in TEXTS]
    params = [_params(i, min_new_tokens=12, max_new_tokens=64) for i in range(len(TEXTS))]
    for out in generate(tiny_model, prompts, params, tiny_tokenizer.spk_emb_id):
        assert out.codes.shape[0] >= 12
        assert (out.codes != 625).all(), "the EOS step must not be part of the output"


def test_eos_on_any_codebook_ends_the_row():
    batch = SamplingBatch.build([SamplingParams(temperature=1e-6)], 4, 626, torch.device("cpu"))
    logits = torch.zeros(1, 4, 626)
    logits[0, :, 10] = 5.0
    logits[0, 2, 625] = 9.0  # only codebook 2 prefers EOS
    scores = process_logits(logits, torch.zeros(1, 4, 626), torch.zeros(1, dtype=torch.long), batch, 625)
    codes = sample(scores, batch, torch.zeros(1, dtype=torch.long))
    assert codes.tolist() == [[10, 10, 625, 10]]


def test_sampling_chain_filters_like_upstream():
    """Temperature, repetition penalty, top-p (>= 3 kept), top-k, and only then EOS masking (upstream's order)."""
    params = SamplingParams(temperature=0.5, top_p=0.5, top_k=20, repetition_penalty=2.0, min_new_tokens=3)
    batch = SamplingBatch.build([params], 1, 10, torch.device("cpu"))
    logits = torch.tensor([[[4.0, 3.0, 1.5, 1.0, 0.5, -1.0, -2.0, -3.0, -4.0, 6.0]]])
    counts = torch.zeros(1, 1, 10)
    counts[0, 0, 0] = 1  # code 0 seen once in the window: its positive logit is divided by 2
    scores = process_logits(logits, counts, torch.tensor([0]), batch, eos=9)
    # scaled: [4, 6, 3, 2, 1, -2, ...] with EOS at 12: top-p keeps only its 3 minimum (EOS, 1, 0), then EOS is
    # masked because min_new_tokens has not been reached, so two codes survive.
    kept = torch.isfinite(scores[0, 0]).nonzero().flatten().tolist()
    assert kept == [0, 1]
    assert scores[0, 0, 0].item() == pytest.approx(4.0)
    assert scores[0, 0, 1].item() == pytest.approx(6.0)

    plain = SamplingBatch.build([SamplingParams(temperature=1.0, top_p=1.0, top_k=4)], 1, 10, torch.device("cpu"))
    logits = torch.tensor([[[4.0, 3.0, 2.0, 1.0, 0.5, -1.0, -2.0, -3.0, -4.0, -5.0]]])
    scores = process_logits(logits, torch.zeros(1, 1, 10), torch.tensor([0]), plain, eos=9)
    assert torch.isfinite(scores[0, 0]).nonzero().flatten().tolist() == [0, 1, 2, 3]


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    rows=st.lists(
        st.tuples(st.floats(0.05, 1.0), st.integers(0, 40), st.integers(0, 2**31 - 1), st.sampled_from([0, 1, 2])),
        min_size=1,
        max_size=6,
    )
)
def test_top_p_then_top_k_match_transformers_warpers(rows):
    """Upstream filters with transformers' TopPLogitsWarper then TopKLogitsWarper (min_tokens_to_keep 3); the
    engine's one-sort chain keeps exactly the same codes per row and codebook, ties included (scores drawn from a
    few levels, so most rows are full of ties), whatever top_p and top_k each row has."""
    from transformers import TopKLogitsWarper, TopPLogitsWarper

    num_vq, num_codes = 2, 30
    params = [SamplingParams(temperature=1.0, top_p=p, top_k=k, repetition_penalty=1.0) for p, k, _, _ in rows]
    batch = SamplingBatch.build(params, num_vq, num_codes, torch.device("cpu"))
    generator = [torch.Generator().manual_seed(seed) for _, _, seed, _ in rows]
    logits = torch.stack([
        (torch.randint(0, 4 + 20 * ties, (num_vq, num_codes), generator=g) / 2.0) if ties < 2
        else torch.randn(num_vq, num_codes, generator=g)
        for g, (_, _, _, ties) in zip(generator, rows, strict=True)
    ])  # fmt: skip
    steps = torch.full((len(rows),), 100)
    got = process_logits(logits, torch.zeros(len(rows), num_vq, num_codes), steps, batch, eos=num_codes - 1)
    for row, p in enumerate(params):
        top_k = num_codes if p.top_k == 0 else max(p.top_k, 3)
        expected = TopPLogitsWarper(p.top_p, min_tokens_to_keep=3)(None, logits[row].clone())
        if top_k < num_codes:
            expected = TopKLogitsWarper(top_k, min_tokens_to_keep=3)(None, expected)
        assert torch.equal(torch.isfinite(got[row]), torch.isfinite(expected)), (row, p)


def _full_race(scores, batch, steps):
    """The draw over every code: argmax of p / Exp(1) with each lane's own uniform."""
    from actors.engine.sampling import row_uniforms

    probs = scores.softmax(dim=-1).double()
    return (probs / -torch.log(row_uniforms(batch, steps, scores.shape[1], scores.shape[2]))).argmax(dim=-1)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    rows=st.lists(
        st.tuples(st.floats(0.05, 1.0), st.sampled_from([0, 1, 3, 5, 20, 40]), st.integers(0, 2**31 - 1),
                  st.sampled_from([0, 1, 2]), st.sampled_from([1e-6, 0.3, 1.0, 3.0])),
        min_size=1, max_size=6,
    )
)  # fmt: skip
def test_the_draw_over_the_kept_candidates_is_the_draw_over_every_code(rows):
    """`sample` races only the max_kept highest scores on the CPU; it must pick what the race over all 626 codes
    picks, row for row, for any top-k / top-p / temperature mix in one batch, ties at the top-k cut included (scores
    from a few levels keep more than k codes: the full race then runs)."""
    num_vq, num_codes = 4, 626
    params = [SamplingParams(temperature=t, top_p=p, top_k=k, seed=s) for p, k, s, _, t in rows]
    batch = SamplingBatch.build(params, num_vq, num_codes, torch.device("cpu"))
    generator = [torch.Generator().manual_seed(seed) for _, _, seed, _, _ in rows]
    logits = torch.stack([
        (torch.randint(0, 3 + 30 * ties, (num_vq, num_codes), generator=g) / 4.0) if ties < 2
        else 3 * torch.randn(num_vq, num_codes, generator=g)
        for g, (_, _, _, ties, _) in zip(generator, rows, strict=True)
    ])  # fmt: skip
    for step in (0, 7, 123):
        steps = torch.full((len(rows),), step)
        scores = process_logits(logits, torch.zeros(len(rows), num_vq, num_codes), steps, batch, eos=625)
        assert torch.equal(sample(scores, batch, steps), _full_race(scores, batch, steps))


def test_the_draw_races_only_the_candidates_when_no_row_kept_more(monkeypatch):
    """The fast path is the one taken in the ordinary case (distinct scores, top_k 20): the full race's uniforms over
    every lane are never computed."""
    from actors.engine import sampling

    params = [SamplingParams(temperature=0.3, top_p=0.7, top_k=20, seed=i) for i in range(8)]
    batch = SamplingBatch.build(params, 4, 626, torch.device("cpu"))
    steps = torch.full((8,), 3)
    scores = process_logits(torch.randn(8, 4, 626), torch.zeros(8, 4, 626), steps, batch, eos=625)
    expected = _full_race(scores, batch, steps)

    def refuse(*args, **kwargs):
        raise AssertionError("the full race ran")

    monkeypatch.setattr(sampling, "row_uniforms", refuse)
    assert batch.max_kept == 20 and torch.equal(sample(scores, batch, steps), expected)


def test_kv_cached_decode_equals_full_recompute(tiny_model, tiny_tokenizer):
    prompt = _prompt(tiny_tokenizer, TEXTS[2], speaker_seed=3)
    out = generate(tiny_model, [prompt], [_params(9, min_new_tokens=10)], tiny_tokenizer.spk_emb_id)[0]
    steps = out.codes.shape[0]
    assert steps >= 10
    with torch.inference_mode():
        embeds = torch.cat(
            [prompt_embeddings(tiny_model, prompt, tiny_tokenizer.spk_emb_id), tiny_model.embed.embed_codes(out.codes)]
        ).unsqueeze(0)
        total = embeds.shape[1]
        # one causal pass over the whole context, its cache in blocks of 5 tokens laid out backwards in the pool
        blocks = -(-total // 5)
        cache = PagedKVCache(tiny_model.config.gpt, blocks + 1, 5, "cpu", torch.float32)
        cache.zero_blocks(1, blocks + 1)
        table = torch.arange(blocks, 0, -1).unsqueeze(0)
        full = tiny_model.gpt(embeds, torch.arange(total).unsqueeze(0), cache, table, [(None, total)])[0]
    # hidden that produced step j sits at position prompt_len - 1 + j
    expected = full[prompt.length - 1 : prompt.length - 1 + steps]
    torch.testing.assert_close(out.hidden, expected, rtol=1e-4, atol=1e-4)


def test_waveforms_are_trimmed_to_their_true_length_and_batch_decoding_equals_alone(tiny_model, tiny_tokenizer):
    prompts = [_prompt(tiny_tokenizer, t) for t in TEXTS[:5]]
    out = generate(tiny_model, prompts, [_params(i) for i in range(5)], tiny_tokenizer.spk_emb_id)
    for use_decoder in (True, False):
        rows = [g.hidden if use_decoder else g.codes for g in out]
        together = decode_waveforms(tiny_model, rows, use_decoder)
        for row, wave in zip(rows, together, strict=True):
            assert wave.shape[0] == frames_to_samples(row.shape[0]) == 512 * row.shape[0] - 256
            alone = decode_waveforms(tiny_model, [row], use_decoder)[0]
            torch.testing.assert_close(wave, alone, rtol=1e-4, atol=1e-5)


def test_batched_istft_equals_torch_istft():
    from actors.model.vocos import istft

    torch.manual_seed(0)
    window = torch.hann_window(1024)
    spec = torch.randn(3, 513, 20, dtype=torch.complex64)
    frames = torch.tensor([20, 13, 7])
    ours = istft(spec, window, 256, frames)
    for row, n in enumerate(frames.tolist()):
        reference = torch.istft(spec[row : row + 1, :, :n], 1024, 256, 1024, window, center=True)[0]
        torch.testing.assert_close(ours[row, : reference.shape[0]], reference, rtol=1e-4, atol=1e-5)


def test_mel_filterbank_and_log_mel_shapes():
    from actors.model.mel import LogMel, mel_filterbank

    fb = mel_filterbank()
    assert fb.shape == (513, 100)
    assert (fb >= 0).all() and fb.sum(0).gt(0).all(), "every mel band must cover some frequency"
    mel = LogMel()(torch.zeros(24_000))
    assert mel.shape == (100, 1 + 24_000 // 256)
    assert torch.allclose(mel, torch.log(torch.tensor(1e-5)))


def test_no_parameter_requires_grad_and_model_is_eval(tiny_model):
    assert not tiny_model.training
    assert not any(p.requires_grad for p in tiny_model.parameters())


def test_prompt_plus_new_tokens_beyond_positions_is_refused(tiny_model, tiny_tokenizer):
    prompt = _prompt(tiny_tokenizer, TEXTS[0])
    with pytest.raises(ValueError, match="positions"):
        generate(tiny_model, [prompt], [_params(0, max_new_tokens=4096)], tiny_tokenizer.spk_emb_id)


def test_per_row_uniforms_depend_only_on_seed_and_step():
    from actors.engine.sampling import row_uniforms

    params = [SamplingParams(seed=s) for s in (1, 2, 1)]
    batch = SamplingBatch.build(params, 4, 626, torch.device("cpu"))
    u = row_uniforms(batch, torch.tensor([0, 0, 0]), 4, 626)
    assert torch.equal(u[0], u[2]) and not torch.equal(u[0], u[1])
    assert (u > 0).all() and (u < 1).all()
    later = row_uniforms(batch, torch.tensor([1, 1, 1]), 4, 626)
    assert not torch.equal(u[0], later[0])
    # roughly uniform
    assert abs(float(u.mean()) - 0.5) < 0.01
    assert np.isclose(float(u.std()), (1 / 12) ** 0.5, atol=0.01)
