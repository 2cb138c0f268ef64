"""Parity with upstream chattts 0.2.5 on the same random checkpoint (goldens from tools/goldens/make_goldens.sh).

Deterministic sampling (temperature 1e-6): codes must be identical for every row; waveforms within 1e-3
relative L2 error through both the hidden-state Decoder and the DVAE; the DVAE encoder must give the same
reference codes; the text front end must feed the GPT the same token ids. The refine-text stage: the same generated
token ids for every golden text (with the default and with a custom refine prompt), and end to end (refine, then
the code stage on the refined text) the same code-prompt ids and codes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from actors.checkpoint import ASSET_FILES
from actors.engine.generate import decode_waveforms, generate
from actors.engine.prompt import CodePrompt
from actors.engine.sampling import SamplingParams
from actors.requests import RefineOptions, SynthesisRequest
from actors.speaker import decode_prompt, decode_speaker, encode_speaker, normalized_speaker, random_speaker
from actors.text import clean_text, decorate, refine_prompt

GOLDENS = Path(__file__).resolve().parents[1] / "fixtures" / "goldens" / "tiny"


@pytest.fixture(scope="module")
def golden():
    meta = json.loads((GOLDENS / "upstream.json").read_text())
    arrays = dict(np.load(GOLDENS / "upstream.npz"))
    return meta, arrays


def rel_error(ours: torch.Tensor | np.ndarray, theirs: np.ndarray) -> float:
    ours = np.asarray(ours, dtype=np.float64)
    theirs = np.asarray(theirs, dtype=np.float64)
    assert ours.shape == theirs.shape, f"shape {ours.shape} != upstream {theirs.shape}"
    return float(np.linalg.norm(ours - theirs) / np.linalg.norm(theirs))


def test_checkpoint_generator_reproduces_golden_checkpoint(golden, tiny_checkpoint):
    meta, _ = golden
    expected = meta["checkpoint"]["sha256"]
    for name in ASSET_FILES:
        found = hashlib.sha256((tiny_checkpoint / "asset" / name).read_bytes()).hexdigest()
        assert found == expected[name], (
            f"{name}: make_checkpoint no longer writes the bytes the goldens were made from; "
            f"regenerate them with tools/goldens/make_goldens.sh"
        )


def test_front_end_matches_upstream_token_ids(golden, tiny_tokenizer):
    meta, arrays = golden
    for row in meta["rows"]:
        cleaned = clean_text(row["text"], "upstream")  # upstream without a registered normaliser
        assert cleaned == row["normalized"]
        transcript = meta["reference_text"] if row["reference"] else ""
        decorated = decorate(cleaned, meta["prompt"], row["speaker_seed"] is not None, transcript)
        assert decorated == row["decorated"]
        assert tiny_tokenizer.encode(decorated) == arrays[f"row{row['row']}_token_ids"].tolist()


def test_seeded_speakers_match_upstream(golden):
    meta, _ = golden
    for seed, upstream_string in meta["speakers"].items():
        ours = random_speaker(int(seed), 128)
        assert torch.equal(ours, decode_speaker(upstream_string, 128))
        assert decode_speaker(encode_speaker(ours), 128).equal(ours)


def test_reference_encoder_matches_upstream(golden, tiny_model):
    meta, arrays = golden
    codes = tiny_model.dvae.encode(torch.from_numpy(arrays["reference_wave"]))
    np.testing.assert_array_equal(codes.numpy(), arrays["reference_codes"])
    np.testing.assert_array_equal(decode_prompt(meta["reference_prompt"]).numpy(), arrays["reference_codes"])


def _golden_prompts(meta, tokenizer):
    prompts, params = [], []
    for row in meta["rows"]:
        seed = row["speaker_seed"]
        speaker = None if seed is None else normalized_speaker(random_speaker(seed, 128))
        reference = decode_prompt(meta["reference_prompt"]) if row["reference"] else None
        transcript = meta["reference_text"] if row["reference"] else ""
        ids = tokenizer.encode(
            decorate(clean_text(row["text"], "upstream"), meta["prompt"], speaker is not None, transcript)
        )
        prompts.append(CodePrompt(ids, speaker, reference))
        params.append(_golden_params(meta))
    return prompts, params


def _golden_params(meta, seed: int = 0) -> SamplingParams:
    return SamplingParams(
        temperature=meta["temperature"],
        top_p=meta["top_p"],
        top_k=meta["top_k"],
        repetition_penalty=meta["repetition_penalty"],
        min_new_tokens=meta["min_new_token"],
        max_new_tokens=meta["max_new_token"],
        seed=seed,
    )


def test_codes_and_waveforms_match_upstream(golden, tiny_model, tiny_tokenizer):
    meta, arrays = golden
    prompts, params = _golden_prompts(meta, tiny_tokenizer)
    out = generate(tiny_model, prompts, params, tiny_tokenizer.spk_emb_id)
    hidden_waves = decode_waveforms(tiny_model, [g.hidden for g in out], use_decoder=True)
    dvae_waves = decode_waveforms(tiny_model, [g.codes for g in out], use_decoder=False)
    for i, generated in enumerate(out):
        np.testing.assert_array_equal(generated.codes.numpy(), arrays[f"row{i}_codes"], err_msg=f"row {i} codes")
        assert rel_error(hidden_waves[i], arrays[f"row{i}_wav_hidden"]) <= 1e-3, f"row {i} hidden-path waveform"
        assert rel_error(dvae_waves[i], arrays[f"row{i}_wav_dvae"]) <= 1e-3, f"row {i} DVAE-path waveform"
    lengths = {int(arrays[f"row{i}_codes"].shape[0]) for i in range(len(out))}
    assert len(lengths) > 3, "goldens should cover rows of several lengths"


def _golden_requests(meta, refine: RefineOptions) -> list[tuple[dict, SynthesisRequest]]:
    """(golden row, its request through the public API) for every row without reference audio."""
    requests = []
    for row in meta["rows"]:
        if row["reference"]:
            continue
        speaker = None if row["speaker_seed"] is None else f"seed:{row['speaker_seed']}"
        request = SynthesisRequest(
            id=f"r{row['row']}",
            text=row["text"],
            speaker=speaker,
            params=_golden_params(meta, seed=99),
            normalize="upstream",
            refine=refine,
        )
        requests.append((row, request))
    return requests


def test_replica_end_to_end_matches_upstream(golden, synthesizer):
    """Through the public Synthesizer API (text in, audio out), not just the engine."""
    meta, arrays = golden
    # the code-stage goldens: upstream's skip_refine_text=True
    requests = _golden_requests(meta, RefineOptions(enabled=False))
    results = synthesizer.synthesize([r for _, r in requests])
    for (row, _), result in zip(requests, results, strict=True):
        index = row["row"]
        assert result.error is None, result.error
        np.testing.assert_array_equal(result.codes, arrays[f"row{index}_codes"])
        assert rel_error(result.audio, arrays[f"row{index}_wav_hidden"]) <= 1e-3


def _golden_refine(meta, **changes) -> RefineOptions:
    refine = meta["refine"]
    return RefineOptions(
        temperature=refine["temperature"],
        top_p=refine["top_P"],
        top_k=refine["top_K"],
        repetition_penalty=refine["repetition_penalty"],
        max_new_tokens=refine["max_new_token"],
        min_new_tokens=refine["min_new_token"],
        **changes,
    )


def test_refine_stage_matches_upstream_token_ids(golden, synthesizer, tiny_tokenizer):
    """Every golden text refined as upstream's `_refine_text` does it: `[Sbreak]{text}[Pbreak]{prompt}`, text head,
    until [Ebreak]; all rows as text rows of one batch, each must generate exactly upstream's ids (which upstream made
    one text at a time). Also with a refine prompt of control tags."""
    meta, arrays = golden
    refine = _golden_refine(meta)
    batcher = synthesizer.batcher
    cases = [(row["row"], row["normalized"], "", f"row{row['row']}_refine_ids") for row in meta["rows"]]
    cases.append((0, meta["rows"][0]["normalized"], meta["refine"]["row0_prompt"], "row0_refine_prompt_ids"))
    for key, (_, text, prompt, _) in enumerate(cases):
        ids = tiny_tokenizer.encode(refine_prompt(text, prompt))
        batcher.submit(("refine", key), CodePrompt(ids), refine.params(row_seed=key), text=True)
    finished = {row.key[1]: row.codes[:, 0].tolist() for row in batcher.run()}
    assert batcher.stats.text_steps > 0
    for key, (row, _, prompt, name) in enumerate(cases):
        assert finished[key] == arrays[name].tolist(), f"row {row} refine ids (prompt {prompt!r})"
    assert len({len(arrays[name]) for *_, name in cases}) > 3, "goldens should cover refinements of several lengths"


def test_replica_end_to_end_with_refine_matches_upstream(golden, synthesizer, tiny_tokenizer):
    """Refine on, through the public Synthesizer API: the refined text's code prompt and codes equal upstream's
    `infer(skip_refine_text=False)` path (refine, decode, then the code stage on the refined text)."""
    meta, arrays = golden
    requests = _golden_requests(meta, _golden_refine(meta))
    results = synthesizer.synthesize([r for _, r in requests])
    for (row, _), result in zip(requests, results, strict=True):
        index = row["row"]
        assert result.error is None, result.error
        decorated = decorate(result.spoken_text, meta["prompt"], row["speaker_seed"] is not None)
        assert tiny_tokenizer.encode(decorated) == arrays[f"row{index}_refined_token_ids"].tolist(), f"row {index}"
        np.testing.assert_array_equal(result.codes, arrays[f"row{index}_refined_codes"], err_msg=f"row {index}")
