"""Checkpoint loading: strict key mapping, sources (local, S3 on loopback, HF hub cache), official sha256 checks."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from actors.checkpoint import (
    ASSET_FILES,
    HF_REPO,
    OFFICIAL_SHA256,
    RAYTTS_CONFIG,
    CheckpointError,
    load_model,
    read_model_config,
    resolve,
)
from actors.checkpoint.layout import gpt_config_to_json
from actors.checkpoint.random_weights import random_state
from actors.model.config import ModelConfig


@pytest.fixture
def checkpoint_copy(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    target = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint, target)
    return target


def _edit(asset: Path, name: str, change) -> None:
    tensors = load_file(str(asset / name))
    change(tensors)
    save_file(tensors, str(asset / name))


def test_round_trip_values_and_weight_norm_folding(tiny_checkpoint):
    config = ModelConfig.from_name("tiny")
    files = random_state(config, 0)
    model = load_model(tiny_checkpoint / "asset")
    gpt = files["gpt/model.safetensors"]
    assert torch.equal(model.gpt.layers[1].mlp.down_proj.weight, gpt["layers.1.mlp.down_proj.weight"])
    assert torch.equal(model.vocos.head.out.weight, files["Vocos.safetensors"]["head.out.weight"])
    assert torch.equal(
        model.dvae.vq_layer.rvqs[1].project_in.bias,
        files["DVAE.safetensors"]["vq_layer.quantizer.rvqs.1.project_in.bias"],
    )
    embed = files["Embed.safetensors"]
    heads = []
    for i in range(4):
        g = embed[f"head_code.{i}.parametrizations.weight.original0"].double()
        v = embed[f"head_code.{i}.parametrizations.weight.original1"].double()
        heads.append(g * v / v.norm(dim=1, keepdim=True))
    torch.testing.assert_close(model.embed.head_code.weight.double(), torch.cat(heads), rtol=1e-6, atol=1e-6)


def test_local_root_and_asset_folder_both_resolve(tiny_checkpoint):
    assert resolve(tiny_checkpoint).asset == resolve(tiny_checkpoint / "asset").asset == tiny_checkpoint / "asset"
    assert resolve(f"file://{tiny_checkpoint}").asset == tiny_checkpoint / "asset"


def test_missing_tensor_names_file_and_key(checkpoint_copy):
    asset = checkpoint_copy / "asset"
    _edit(asset, "Decoder.safetensors", lambda t: t.pop("decoder.conv_out.weight"))
    with pytest.raises(
        CheckpointError, match=r"Decoder\.safetensors lacks 1 tensors.*decoder\.decoder\.conv_out\.weight"
    ):
        load_model(asset)


def test_unknown_tensor_names_file_and_key(checkpoint_copy):
    asset = checkpoint_copy / "asset"
    _edit(asset, "Vocos.safetensors", lambda t: t.__setitem__("backbone.extra.weight", torch.zeros(3)))
    with pytest.raises(CheckpointError, match=r"Vocos\.safetensors:backbone\.extra\.weight"):
        load_model(asset)


def test_wrong_shape_names_file_key_and_both_shapes(checkpoint_copy):
    asset = checkpoint_copy / "asset"
    _edit(asset, "Embed.safetensors", lambda t: t.__setitem__("emb_text.weight", torch.zeros(21178, 64)))
    with pytest.raises(
        CheckpointError,
        match=r"Embed\.safetensors: 'emb_text\.weight' has shape \(21178, 64\), expected \(21178, 128\)",
    ):
        load_model(asset)


def test_half_of_a_weight_norm_pair_missing(checkpoint_copy):
    asset = checkpoint_copy / "asset"
    _edit(asset, "Embed.safetensors", lambda t: t.pop("head_code.2.parametrizations.weight.original0"))
    with pytest.raises(CheckpointError, match=r"head_code\.2\.parametrizations\.weight\.original0 \(g\) is missing"):
        load_model(asset)


def test_missing_file_is_listed(checkpoint_copy):
    (checkpoint_copy / "asset" / "DVAE.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"missing checkpoint files \['DVAE\.safetensors'\]"):
        resolve(checkpoint_copy)


def test_pickles_are_refused(checkpoint_copy):
    asset = checkpoint_copy / "asset"
    (asset / "Decoder.safetensors").rename(asset / "Decoder.pt")
    with pytest.raises(CheckpointError, match="never unpickles"):
        resolve(checkpoint_copy)


def test_corrupt_safetensors_is_reported(checkpoint_copy):
    (checkpoint_copy / "asset" / "Vocos.safetensors").write_bytes(b"\x00not a safetensors file")
    with pytest.raises(CheckpointError, match=r"Vocos\.safetensors: not a readable safetensors file"):
        load_model(checkpoint_copy / "asset")


def test_unsupported_llama_settings_are_refused(checkpoint_copy):
    path = checkpoint_copy / "asset" / "gpt" / "config.json"
    config = json.loads(path.read_text())
    config["rope_scaling"] = {"type": "linear", "factor": 2.0}
    path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="rope_scaling"):
        read_model_config(checkpoint_copy / "asset")


def test_not_a_checkpoint_says_what_was_expected(tmp_path):
    with pytest.raises(CheckpointError, match=r"expected .*asset/gpt/config\.json"):
        resolve(tmp_path)
    with pytest.raises(CheckpointError, match="neither an existing folder"):
        resolve(tmp_path / "nope")


def test_builtin_tiny_is_written_once_and_reused(tmp_path):
    first = resolve("tiny", cache_dir=tmp_path)
    stamp = (first.asset / "Embed.safetensors").stat().st_mtime_ns
    second = resolve(None, cache_dir=tmp_path)
    assert second.asset == first.asset
    assert (second.asset / "Embed.safetensors").stat().st_mtime_ns == stamp


def test_full_preset_shapes_match_the_published_model():
    """The full preset is the real model's size; parameter counts as documented for ChatTTS."""
    from actors.model.chattts import ChatTTSModel

    with torch.device("meta"):
        model = ChatTTSModel(ModelConfig.from_name("full"))
    count = {
        name: sum(p.numel() for p in getattr(model, name).parameters())
        for name in ("gpt", "embed", "decoder", "dvae", "vocos")
    }
    assert 188e6 < count["gpt"] < 190e6
    assert model.embed.emb_text.weight.shape == (21178, 768)
    assert model.embed.head_code.weight.shape == (4 * 626, 768)
    assert 25e6 < count["decoder"] < 27e6
    assert 13e6 < count["vocos"] < 14e6


def _fake_hub_cache(
    cache: Path, checkpoint: Path, repo: str, commit: str = "0123456789abcdef0123456789abcdef01234567"
) -> None:
    """The on-disk layout huggingface_hub keeps for a downloaded snapshot (refs/main -> snapshots/<commit>)."""
    folder = cache / "hf" / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    shutil.copytree(checkpoint / "asset", folder / "snapshots" / commit / "asset")


@pytest.fixture
def offline_hub(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_hub_source_verifies_official_files(tiny_checkpoint, tmp_path, offline_hub):
    """hf://2Noise/ChatTTS claims to be the official model: our random files must fail its sha256 check.

    The hub client runs for real against its own cache in offline mode (no network here); the download step
    itself cannot be exercised on these machines.
    """
    _fake_hub_cache(tmp_path, tiny_checkpoint, HF_REPO)
    with pytest.raises(CheckpointError, match=r"sha256 .* does not match the official 2Noise/ChatTTS file"):
        resolve(f"hf://{HF_REPO}", cache_dir=tmp_path)
    found = resolve(f"hf://{HF_REPO}", cache_dir=tmp_path, verify="never")
    assert found.official is False  # loaded as asked, but its files are not the release's
    assert load_model(found.asset).config.name == "tiny"


def test_hub_source_for_another_repo_needs_no_official_hashes(tiny_checkpoint, tmp_path, offline_hub):
    _fake_hub_cache(tmp_path, tiny_checkpoint, "someone/chattts-finetune")
    found = resolve("hf://someone/chattts-finetune", cache_dir=tmp_path)
    assert found.official is False
    with pytest.raises(CheckpointError, match="sha256"):
        resolve("hf://someone/chattts-finetune", cache_dir=tmp_path, verify="always")


def test_s3_checkpoint_loads_like_the_local_one(s3_server, tiny_checkpoint, tmp_path, monkeypatch):
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    s3_server.client().create_bucket(Bucket="models")
    s3_server.upload_dir("models", "chattts-tiny", tiny_checkpoint)
    remote = resolve("s3://models/chattts-tiny", cache_dir=tmp_path)
    assert remote.asset != tiny_checkpoint / "asset"
    for name in ASSET_FILES:
        assert (remote.asset / name).read_bytes() == (tiny_checkpoint / "asset" / name).read_bytes()
    local_model = load_model(tiny_checkpoint / "asset")
    remote_model = load_model(remote.asset)
    for (name, a), (_, b) in zip(local_model.state_dict().items(), remote_model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    # the second resolve uses the cache, even with the server unreachable
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    assert resolve("s3://models/chattts-tiny", cache_dir=tmp_path).asset == remote.asset


def test_s3_missing_checkpoint_is_a_clear_error(s3_server, tmp_path, monkeypatch):
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    s3_server.client().create_bucket(Bucket="empty-models")
    with pytest.raises(CheckpointError, match="no gpt/config.json under"):
        resolve("s3://empty-models/nothing-here", cache_dir=tmp_path)


def test_make_checkpoint_cli_writes_the_real_layout(tmp_path):
    from jobs.cli import main

    assert main(["make-checkpoint", str(tmp_path / "ck"), "--preset", "tiny", "--seed", "3"]) == 0
    for name in ASSET_FILES:
        assert (tmp_path / "ck" / "asset" / name).is_file(), name
    assert os.path.getsize(tmp_path / "ck" / "asset" / "Embed.safetensors") > 1_000_000


def test_eos_gain_scales_only_the_end_code_rows_of_the_code_heads(tmp_path):
    """The benchmarks' mixed-length checkpoint differs from the tests' one only in the EOS rows' weight-norm gains."""
    from actors.checkpoint.random_weights import EOS_GAIN, write_checkpoint

    base = load_file(str(write_checkpoint(tmp_path / "base", "tiny", 0) / "Embed.safetensors"))
    mixed = load_file(str(write_checkpoint(tmp_path / "mixed", "tiny", 0, eos_gain=1.8) / "Embed.safetensors"))
    eos = ModelConfig.from_name("tiny").gpt.eos_code
    assert base.keys() == mixed.keys()
    changed = [k for k in base if not torch.equal(base[k], mixed[k])]
    assert changed and all(k.startswith("head_code.") and k.endswith("original0") for k in changed)
    for key in changed:
        ratio = mixed[key] / base[key]
        torch.testing.assert_close(ratio[eos], torch.full_like(ratio[eos], 1.8 / EOS_GAIN))
        others = torch.ones(ratio.shape[0], dtype=torch.bool)
        others[eos] = False
        assert torch.equal(mixed[key][others], base[key][others])


def test_model_id_names_the_source_and_changes_with_any_file(checkpoint_copy):
    """Output rows record `source@sha256:<digest>`: the same files give the same id wherever they are; a changed
    weight or tokenizer file gives another."""
    first = resolve(str(checkpoint_copy))
    assert first.model_id == f"{checkpoint_copy}@sha256:{first.sha256[:16]}"
    moved = checkpoint_copy.parent / "moved"
    shutil.copytree(checkpoint_copy, moved)
    assert resolve(str(moved)).sha256 == first.sha256
    _edit(checkpoint_copy / "asset", "Vocos.safetensors", lambda t: t.update({k: v + 1 for k, v in t.items()}))
    assert resolve(str(checkpoint_copy)).sha256 != first.sha256
    tokenizer = moved / "asset" / "tokenizer" / "tokenizer_config.json"
    tokenizer.write_text(tokenizer.read_text() + " ")
    assert resolve(str(moved)).sha256 != first.sha256


def _official_gpt_config() -> bytes:
    """The official asset/gpt/config.json, byte for byte (its sha256 is upstream's published one)."""
    gpt = ModelConfig.from_name("full").gpt
    official_extras = {"num_audio_tokens": gpt.num_audio_tokens, "num_text_tokens": gpt.num_text_tokens,
                       "num_vq": gpt.num_vq, "spk_KL": False, "spk_emb_dim": 192, "transformers_version": "4.41.2"}  # fmt: skip
    text = json.dumps({**gpt_config_to_json(gpt), **official_extras}, indent=2, sort_keys=True) + "\n"
    assert hashlib.sha256(text.encode()).hexdigest() == OFFICIAL_SHA256["gpt/config.json"]
    return text.encode()


def test_fine_tuned_checkpoint_in_the_official_layout_loads_and_says_its_weights_differ(checkpoint_copy, caplog):
    """A local folder with the official gpt/config.json but other weights (a fine-tuned or community checkpoint):
    the default `verify=auto` loads it and says at start-up which files differ from the release; only
    `verify=always` insists on the official files, and its error names the way out (--verify never)."""
    asset = checkpoint_copy / "asset"
    (asset / "gpt" / "config.json").write_bytes(_official_gpt_config())
    (asset / RAYTTS_CONFIG).unlink()
    with caplog.at_level(logging.WARNING, logger="actors.checkpoint"):
        found = resolve(str(checkpoint_copy))
    assert found.official is False
    assert found.asset == asset
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "other weights" in warning and "gpt/model.safetensors" in warning and found.model_id in warning
    assert "gpt/config.json," not in warning  # the config is the official one; only the differing files are named
    with pytest.raises(CheckpointError, match=r"does not match the official .*--verify never"):
        resolve(str(checkpoint_copy), verify="always")


def test_official_files_are_recognised_by_content(checkpoint_copy, monkeypatch):
    """`official` is true exactly when every file's sha256 is the release's (here: the release's hashes replaced
    by our files' own, since the real weights cannot be downloaded on these machines)."""
    import actors.checkpoint.sources as checkpoint  # where the release's hashes are looked up

    asset = checkpoint_copy / "asset"
    (asset / RAYTTS_CONFIG).unlink()
    ours = {name: checkpoint.file_sha256(asset / name) for name in OFFICIAL_SHA256}
    monkeypatch.setattr(checkpoint, "OFFICIAL_SHA256", ours)
    assert resolve(str(checkpoint_copy), verify="always").official is True
    _edit(asset, "Vocos.safetensors", lambda t: t.update({k: v + 1 for k, v in t.items()}))
    assert checkpoint.official_mismatches(asset) == ["Vocos.safetensors"]
    with pytest.raises(CheckpointError, match="Vocos.safetensors: sha256"):
        resolve(str(checkpoint_copy), verify="always")


def _stage_in_subprocess(source: str, dest: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "jobs.cli", "stage-model", source, dest],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def test_stage_model_copies_a_checkpoint_once_and_again_only_when_the_source_changes(tiny_checkpoint, tmp_path):
    """`raytts stage-model` (what the KubeRay pods' init container runs): a plain local checkpoint that loads with
    the source's digest; a second run with the same source keeps the files (no copy); another source replaces
    them; two processes staging at once (pods sharing a node's volume) leave one complete copy."""
    from actors.checkpoint import resolve, stage

    dest = tmp_path / "models" / "chattts"
    assert stage(str(tiny_checkpoint), dest) == dest
    staged = resolve(dest)
    assert staged.sha256 == resolve(tiny_checkpoint).sha256
    gpt = dest / "asset" / "gpt" / "model.safetensors"
    before = gpt.stat().st_mtime_ns
    stage(str(tiny_checkpoint), dest)
    assert gpt.stat().st_mtime_ns == before, "the same source was copied again"

    other = tmp_path / "other"
    shutil.copytree(tiny_checkpoint, other)
    state = load_file(other / "asset" / "Decoder.safetensors")
    key = sorted(state)[0]
    state[key] = state[key] + 1
    save_file(state, str(other / "asset" / "Decoder.safetensors"), metadata={"format": "pt"})
    stage(str(other), dest)
    assert resolve(dest).sha256 == resolve(other).sha256 != staged.sha256

    dest2 = tmp_path / "shared" / "chattts"
    procs = [_stage_in_subprocess(str(tiny_checkpoint), str(dest2)) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert resolve(dest2).sha256 == staged.sha256
    assert sorted(p.name for p in dest2.parent.iterdir()) == [".chattts.lock", "chattts"], "no half copy left"
    logs = "".join(err for _, err in outputs)
    assert logs.count("staged checkpoint") == 1 and logs.count("already staged") == 1, logs


def test_stage_model_refuses_a_missing_source_and_a_folder_it_did_not_write(tiny_checkpoint, tmp_path):
    done = _stage_in_subprocess(str(tmp_path / "nope"), str(tmp_path / "dest"))
    _, err = done.communicate(timeout=120)
    assert done.returncode == 2 and "nope" in err and "neither an existing folder" in err, err
    assert not (tmp_path / "dest").exists()
    mine = tmp_path / "mine"
    shutil.copytree(tiny_checkpoint, mine)
    done = _stage_in_subprocess(str(tiny_checkpoint), str(mine))
    _, err = done.communicate(timeout=120)
    assert done.returncode == 2 and "was not written by stage-model" in err, err
    assert (mine / "asset" / "gpt" / "model.safetensors").exists(), "a folder stage-model did not write was touched"
