"""The ONNX route: `raytts export-onnx` (blockwise, each block verified by onnxruntime), the onnxruntime backend
behind the same engine (same codes as the torch backend), int8, and the export run by a plain onnxruntime script."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from actors.engine.generate import decode_waveforms, generate
from actors.engine.params import SamplingParams
from actors.engine.prompt import CodePrompt
from actors.onnx.export import TOLERANCE, ExportError, export_onnx
from actors.onnx.runtime import OnnxChatTTS
from actors.speaker import normalized_speaker, random_speaker
from actors.text import decorate

pytestmark = pytest.mark.timeout(600)

TEXTS = ["Hello world, this is a quick test.", "你好，欢迎使用语音合成。", "Short.", "The quick brown fox jumps over."]


def _prompt(tokenizer, text: str, speaker_seed: int | None = None) -> CodePrompt:
    speaker = None if speaker_seed is None else normalized_speaker(random_speaker(speaker_seed, 128))
    return CodePrompt(tokenizer.encode(decorate(text, "[speed_5]", speaker is not None)), speaker)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def test_export_writes_every_block_verified_with_one_layer_graph(tiny_onnx, tiny_checkpoint):
    from actors.checkpoint import resolve

    manifest = json.loads((tiny_onnx / "manifest.json").read_text())
    blocks = manifest["blocks"]
    names = {"embed", "norm", "code_head", "text_head", "sampling", "decoder", "dvae_decode", "dvae_encode", "vocos"}
    assert names | {"layers/layer_00", "layers/layer_01"} == set(blocks)
    for name, entry in blocks.items():
        assert (tiny_onnx / entry["file"]).is_file(), name
        assert entry["quantization"] == "none" and entry["dtype"] == "float32"
        assert entry["verify"]["max_rel_error"] <= TOLERANCE["float32"], (name, entry["verify"])
    layers = [blocks[f"layers/layer_{i:02d}"] for i in range(2)]
    assert layers[0]["graph_digest"] == layers[1]["graph_digest"], "every layer file must hold the same graph"
    x = layers[0]["inputs"][0]
    assert x["name"] == "x" and x["shape"][:2] == ["batch", "seq"] and x["dtype"] == "float32"
    assert [o["name"] for o in layers[0]["outputs"]] == ["out", "k_new", "v_new"]
    assert manifest["source"]["sha256"] == resolve(str(tiny_checkpoint)).sha256
    assert manifest["opset"] >= 17 and manifest["istft"]["hop_length"] == 256


def test_onnx_backend_generates_the_torch_codes_and_audio(tiny_model, tiny_onnx, tiny_tokenizer):
    """Sampled (temperature 0.7, top-p, top-k, penalty) rows of mixed lengths, speakers, a batch of four: the same
    codes on both backends, hidden states and waveforms (Decoder and DVAE paths) to float rounding."""
    onnx = OnnxChatTTS(tiny_onnx, tiny_model.config)
    prompts = [_prompt(tiny_tokenizer, t, speaker_seed=i if i % 2 else None) for i, t in enumerate(TEXTS)]
    params = [SamplingParams(seed=10 + i, temperature=0.7, top_p=0.9, top_k=40, max_new_tokens=40) for i in range(4)]
    want = generate(tiny_model, prompts, params, tiny_tokenizer.spk_emb_id)
    got = generate(onnx, prompts, params, tiny_tokenizer.spk_emb_id)
    assert len({g.codes.shape[0] for g in want}) > 1, "rows should stop at different steps"
    for row, (a, b) in enumerate(zip(want, got, strict=True)):
        assert torch.equal(a.codes, b.codes), f"row {row}: codes differ between the torch and onnx backends"
        torch.testing.assert_close(b.hidden, a.hidden, rtol=1e-4, atol=1e-4)
    for use_decoder in (True, False):
        inputs = [g.hidden if use_decoder else g.codes for g in want]
        for a, b in zip(decode_waveforms(tiny_model, inputs, use_decoder), decode_waveforms(onnx, inputs, use_decoder),
                        strict=True):  # fmt: skip
            assert a.shape == b.shape and _rel(b, a) < 1e-3


def test_synthesizer_on_the_onnx_backend_matches_torch_with_refine_and_reference_audio(synthesizer, tiny_onnx):
    """Whole requests (front end, refine-text rows, code rows, a reference clip encoded by the exported DVAE
    encoder, decoding) on the onnx backend equal the torch backend's."""
    from actors.replica import Synthesizer
    from actors.requests import SynthesisRequest

    onnx = Synthesizer(
        model=str(synthesizer.checkpoint.source), device="cpu", backend="onnx", onnx={"path": str(tiny_onnx)}
    )
    assert onnx.model.backend == "onnx" and onnx.plan.slots == synthesizer.plan.slots
    rng = np.random.default_rng(0)
    clip = (0.1 * np.sin(np.arange(24_000) * 0.05) + 0.01 * rng.standard_normal(24_000)).astype(np.float32)
    reference = synthesizer.encode_reference(clip, 24_000)
    assert torch.equal(onnx.encode_reference(clip, 24_000), reference)

    def requests() -> list[SynthesisRequest]:
        params = SamplingParams(seed=3, temperature=0.5, max_new_tokens=48)
        return [
            SynthesisRequest(id="a", text="It costs 12 dollars.", params=params),
            SynthesisRequest(id="b", text="你好，世界。", speaker="seed:4", params=params),
            SynthesisRequest(
                id="c",
                text="with a reference voice",
                reference_codes=reference,
                reference_text="a reference",
                params=params,
            ),  # fmt: skip
        ]

    want, got = synthesizer.synthesize(requests()), onnx.synthesize(requests())
    assert onnx.stats.refined_segments >= 3, "the refine-text stage ran on the onnx backend"
    for a, b in zip(want, got, strict=True):
        assert a.error is None and b.error is None, (a.error, b.error)
        assert a.spoken_text == b.spoken_text and np.array_equal(a.codes, b.codes), a.id
        assert _rel(torch.as_tensor(b.audio), torch.as_tensor(a.audio)) < 1e-3


_PLAIN_SCRIPT = r'''
"""One prefill and one decode step of an exported raytts model with onnxruntime and numpy only."""
import json, sys
import numpy as np
import onnxruntime as ort

folder, ids = sys.argv[1], json.loads(sys.argv[2])
manifest = json.load(open(f"{folder}/manifest.json"))
gpt = manifest["config"]["gpt"]
heads, layers, dim = gpt["num_key_value_heads"], gpt["num_hidden_layers"], gpt["hidden_size"] // gpt["num_attention_heads"]
q, codes_n = gpt["num_vq"], gpt["num_audio_tokens"]
s = {n: ort.InferenceSession(f"{folder}/{e['file']}", providers=["CPUExecutionProvider"])
     for n, e in manifest["blocks"].items()}
block, nb = 16, 4
pool_k = [np.zeros((heads, 1 + nb, block, dim), np.float32) for _ in range(layers)]
pool_v = [np.zeros_like(p) for p in pool_k]
table = np.arange(1, 1 + nb)  # this row's blocks; block 0 is the null block
read = (np.arange(heads)[:, None] * (1 + nb) + table[None, :]).reshape(-1).astype(np.int64)

def gpt_step(embeds, positions):
    x = embeds[None]
    for i in range(layers):
        x, k, v = s[f"layers/layer_{i:02d}"].run(None, {"x": x, "positions": positions[None], "k_pool": pool_k[i],
                                                        "v_pool": pool_v[i], "read_index": read})
        pool_k[i][:, table[positions // block], positions % block] = k[:, 0]
        pool_v[i][:, table[positions // block], positions % block] = v[:, 0]
    return s["norm"].run(None, {"x": x})[0][0, -1]

def sample(hidden, step):  # greedy: the argmax of the sampling head's scores
    logits = s["code_head"].run(None, {"hidden": hidden[None]})[0]
    scores = s["sampling"].run(None, {"logits": logits, "counts": np.zeros_like(logits),
        "steps": np.array([step]), "temperature": np.ones((1, q), np.float32), "top_p": np.array([0.7], np.float32),
        "top_k": np.array([20]), "penalty": np.array([1.0], np.float32), "min_new_tokens": np.array([2]),
        "eos": np.array(codes_n - 1)})[0]
    return scores[0].argmax(-1)

n = len(ids)
embeds = s["embed"].run(None, {"ids": np.array(ids), "codes": np.zeros((n, q), np.int64),
                               "kind": np.zeros(n, np.int64), "speaker": np.zeros((n, gpt["hidden_size"]), np.float32)})[0]
first = sample(gpt_step(embeds, np.arange(n)), 0)
code_embed = s["embed"].run(None, {"ids": np.zeros(1, np.int64), "codes": first[None].astype(np.int64),
                                   "kind": np.ones(1, np.int64), "speaker": np.zeros((1, gpt["hidden_size"]), np.float32)})[0]
second = sample(gpt_step(code_embed, np.array([n])), 1)
assert not any(m == "torch" or m.startswith(("actors", "jobs", "pipeline")) for m in sys.modules), "imported raytts/torch"
print(json.dumps([first.tolist(), second.tolist()]))
'''


def test_a_plain_onnxruntime_script_runs_a_decode_step_of_the_export(tiny_onnx, tiny_model, tiny_tokenizer, tmp_path):
    """The exported folder needs no raytts: a script with onnxruntime and numpy only (isolated interpreter, run
    outside the repository) prefills a prompt and decodes two steps; greedy codes equal the torch engine's."""
    prompt = _prompt(tiny_tokenizer, TEXTS[0])
    script = tmp_path / "plain.py"
    script.write_text(_PLAIN_SCRIPT)
    out = subprocess.run(
        [sys.executable, "-I", str(script), str(tiny_onnx), json.dumps(prompt.token_ids)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    codes = json.loads(out.stdout.strip().splitlines()[-1])
    greedy = SamplingParams(temperature=1e-6, top_p=0.7, top_k=20, max_new_tokens=2, min_new_tokens=2)
    want = generate(tiny_model, [prompt], [greedy], tiny_tokenizer.spk_emb_id)[0].codes
    assert codes == want.tolist()


@pytest.mark.slow
def test_int8_default_export_is_cached_reported_and_speaks(tiny_checkpoint, tmp_path):
    """engine.onnx.quantize=int8 with no path: the checkpoint is exported once into the cache, its GPT layers and
    heads int8 with their error reported (not failed), and the replica answers requests."""
    from actors.replica import Synthesizer
    from actors.requests import SynthesisRequest

    synth = Synthesizer(model=str(tiny_checkpoint), device="cpu", backend="onnx", onnx={"quantize": "int8"},
                        cache_dir=tmp_path, max_new_tokens=64)  # fmt: skip
    folder = synth.model.folder
    assert folder.parent == tmp_path / "onnx" and "int8" in folder.name
    manifest = json.loads((folder / "manifest.json").read_text())
    for name, entry in manifest["blocks"].items():
        quantized = name.startswith("layers/") or name in ("code_head", "text_head")
        assert entry["quantization"] == ("int8" if quantized else "none"), name
        if quantized:
            assert entry["file"].endswith(".int8.onnx") and "float_verify" in entry
            assert 0 < entry["verify"]["max_rel_error"] < 0.5, (name, entry["verify"])
    assert sorted(p.name for p in (folder / "layers").iterdir()) == ["layer_00.int8.onnx", "layer_01.int8.onnx"]
    results = synth.synthesize(
        [SynthesisRequest(id="a", text="hello there.", params=SamplingParams(max_new_tokens=32))]
    )
    assert results[0].error is None and results[0].audio.shape[0] > 0
    again = Synthesizer(model=str(tiny_checkpoint), device="cpu", backend="onnx", onnx={"quantize": "int8"},
                        cache_dir=tmp_path, max_new_tokens=64)  # fmt: skip
    assert again.model.folder == folder and len(list((tmp_path / "onnx").glob("*int8*"))) == 2  # folder + its lock


def test_an_export_whose_block_is_off_fails_naming_the_block(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setitem(TOLERANCE, "float32", 0.0)  # any difference at all is now too much
    with pytest.raises(ExportError, match=r"block 'embed'.*differs from torch"):
        export_onnx(tiny_model, tmp_path / "out", source={"checkpoint": "tiny"})


def test_an_export_of_another_checkpoint_is_refused(tiny_onnx, tmp_path):
    from actors.checkpoint.random_weights import write_checkpoint
    from actors.replica import Synthesizer

    other = tmp_path / "other"
    write_checkpoint(other, "tiny", 5)
    with pytest.raises(ValueError, match="was made from checkpoint sha256"):
        Synthesizer(model=str(other), device="cpu", backend="onnx", onnx={"path": str(tiny_onnx)})
    with pytest.raises(ValueError, match="the onnx backend needs off"):
        Synthesizer(model=str(other), backend="onnx", compile="inductor")


def test_job_and_serve_configs_take_the_backend_and_resolve_the_export_path(tmp_path):
    from actors.serving.config import ServerConfig
    from pipeline.config import JobConfig

    (tmp_path / "job.yaml").write_text(
        "inputs: {text: [t.txt]}\noutput: {path: out}\nengine: {backend: onnx, onnx: {path: export, quantize: int8}}\n"
    )
    job = JobConfig.load(tmp_path / "job.yaml")
    assert job.engine.backend == "onnx" and job.engine.onnx.path == str(tmp_path / "export")
    (tmp_path / "serve.yaml").write_text("app:\n  engine: {backend: onnx, onnx: {path: export}}\n")
    serve = ServerConfig.load(tmp_path / "serve.yaml")
    assert serve.app.engine.onnx.path == str(tmp_path / "export")
    with pytest.raises(ValueError, match="quantize"):
        JobConfig.model_validate({"inputs": {"text": ["t"]}, "output": {"path": "o"},
                                  "engine": {"onnx": {"quantize": "int4"}}})  # fmt: skip


def test_export_onnx_cli_refuses_int8_from_float16(tmp_path, capsys):
    from jobs.cli import main

    status = main(["export-onnx", "--model", "tiny", "--output", str(tmp_path / "x"), "--dtype", "float16",
                   "--quantize", "int8"])  # fmt: skip
    assert status == 1 and "int8 quantisation starts from the float32 export" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_full_size_export_verifies_and_generates_the_torch_codes(tmp_path):
    """The real architecture (20 layers, 768 wide, random weights in the official layout): every block within 1e-4 of
    torch at export, and the onnx backend generates the torch backend's codes (greedy and sampled rows)."""
    from actors.checkpoint import load_model
    from actors.checkpoint.random_weights import write_checkpoint
    from actors.onnx.export import export_checkpoint
    from actors.tokenizer import TextTokenizer

    write_checkpoint(tmp_path / "ck", "full", 0, eos_gain=1.8)
    manifest = export_checkpoint(str(tmp_path / "ck"), tmp_path / "onnx")
    assert len([b for b in manifest["blocks"] if b.startswith("layers/")]) == 20
    assert max(b["verify"]["max_rel_error"] for b in manifest["blocks"].values()) <= TOLERANCE["float32"]
    model = load_model(tmp_path / "ck" / "asset")
    onnx = OnnxChatTTS(tmp_path / "onnx", model.config)
    tokenizer = TextTokenizer(tmp_path / "ck" / "asset" / "tokenizer", model.config.gpt.num_text_tokens)
    speaker = normalized_speaker(random_speaker(3, model.config.gpt.hidden_size))
    prompts = [CodePrompt(tokenizer.encode(decorate(t, "[speed_5]", i == 1)), speaker if i == 1 else None)
               for i, t in enumerate(TEXTS[:3])]  # fmt: skip
    params = [SamplingParams(seed=i, temperature=(1e-6, 0.3, 0.7)[i], max_new_tokens=24) for i in range(3)]
    want = generate(model, prompts, params, tokenizer.spk_emb_id)
    got = generate(onnx, prompts, params, tokenizer.spk_emb_id)
    for a, b in zip(want, got, strict=True):
        assert torch.equal(a.codes, b.codes)
        torch.testing.assert_close(b.hidden, a.hidden, rtol=1e-3, atol=1e-3)


def test_the_onnx_route_without_its_extra_says_what_to_install(monkeypatch):
    """`raytts export-onnx` without the onnx extra failed deep in torch's exporter with "No module named
    'onnxscript'"; it now names the extra to install (the import machinery is told the package is missing)."""
    import importlib.util

    from actors.onnx import require_onnx

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    with pytest.raises(
        ModuleNotFoundError,
        match=r"needs the onnx extra, and onnxscript is not installed: pip install 'raytts\[onnx\]'",
    ):
        require_onnx("raytts export-onnx")
