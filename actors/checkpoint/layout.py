"""What a ChatTTS checkpoint is made of: the HF 2Noise/ChatTTS file layout, the key maps from its tensors to
raytts' modules, and its configs (`gpt/config.json` plus raytts' own `raytts.json` for the shapes the official model
takes from code). No downloads and no loading here: `sources` finds a checkpoint, `loading` builds the model."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..model.config import GPTConfig, ModelConfig

HF_REPO = "2Noise/ChatTTS"
# Default hub revision. The *content* is pinned regardless: files from 2Noise/ChatTTS must match OFFICIAL_SHA256,
# so a moved branch fails loudly instead of changing outputs. Pin a commit with hf://2Noise/ChatTTS@<sha>.
HF_REVISION = "main"

ASSET_FILES = (
    "gpt/config.json",
    "gpt/model.safetensors",
    "Embed.safetensors",
    "Decoder.safetensors",
    "DVAE.safetensors",
    "Vocos.safetensors",
    "tokenizer/tokenizer.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/special_tokens_map.json",
)
RAYTTS_CONFIG = "raytts.json"


class CheckpointError(ValueError):
    """A checkpoint is missing, malformed, or does not match the model it claims to be."""


# --------------------------------------------------------------------------------------------------------------
# Key maps: checkpoint key -> module key, per file. `None` marks keys that are known and deliberately unused.


def _identity(prefix: str) -> Callable[[str], str | None]:
    return lambda key: prefix + key


def _dvae_key(key: str) -> str | None:
    key = key.replace("vq_layer.quantizer.rvqs.", "vq_layer.rvqs.")
    key = key.replace("preprocessor_mel.mel_spec.spectrogram.window", "preprocessor_mel.window")
    key = key.replace("preprocessor_mel.mel_spec.mel_scale.fb", "preprocessor_mel.fb")
    return "dvae." + key


def _vocos_key(key: str) -> str | None:
    if key.startswith("feature_extractor."):
        return None  # the training-time mel front end; Vocos decodes from mels only
    return "vocos." + key.replace("head.istft.window", "head.window")


def _gpt_key(key: str) -> str | None:
    if key.startswith("embed_tokens."):
        return None  # ChatTTS embeds tokens itself (Embed.safetensors); an LlamaModel export may carry this
    return "gpt." + key


_WEIGHT_NORM = re.compile(r"(head_text|head_code\.(\d+))\.parametrizations\.weight\.original([01])")


@dataclass(frozen=True)
class _FileSpec:
    path: str
    key_map: Callable[[str], str | None]


TENSOR_FILES = (
    _FileSpec("gpt/model.safetensors", _gpt_key),
    _FileSpec("Embed.safetensors", _identity("embed.")),
    _FileSpec("Decoder.safetensors", _identity("decoder.")),
    _FileSpec("DVAE.safetensors", _dvae_key),
    _FileSpec("Vocos.safetensors", _vocos_key),
)


FILE_OF_PREFIX = {
    "gpt": "gpt/model.safetensors",
    "embed": "Embed.safetensors",
    "decoder": "Decoder.safetensors",
    "dvae": "DVAE.safetensors",
    "vocos": "Vocos.safetensors",
}


def fold_heads(tensors: dict[str, torch.Tensor], num_vq: int, file: str) -> dict[str, torch.Tensor]:
    """Weight-normed heads (g = original0 [out, 1], v = original1 [out, in]) -> plain weights; code heads merged."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    out: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        match = _WEIGHT_NORM.fullmatch(key)
        if match is None:
            out[key] = value
            continue
        parts.setdefault(match.group(1), {})["gv"[int(match.group(3))]] = value
    for name, gv in parts.items():
        if set(gv) != {"g", "v"}:
            missing = "original0 (g)" if "g" not in gv else "original1 (v)"
            raise CheckpointError(f"{file}: {name}.parametrizations.weight.{missing} is missing")
        parts[name] = {"w": torch._weight_norm(gv["v"].float(), gv["g"].float(), 0)}
    if "head_text" in parts:
        out["head_text.weight"] = parts.pop("head_text")["w"]
    code_heads = [parts.pop(f"head_code.{i}", None) for i in range(num_vq)]
    if any(h is None for h in code_heads):
        missing = [f"head_code.{i}" for i, h in enumerate(code_heads) if h is None]
        raise CheckpointError(f"{file}: weight-normed code heads {missing} are missing; expected {num_vq} heads")
    if parts:
        raise CheckpointError(f"{file}: unexpected weight-normed heads {sorted(parts)}")
    out["head_code.weight"] = torch.cat([h["w"] for h in code_heads], dim=0)
    return out


# --------------------------------------------------------------------------------------------------------------
# Configs


_LLAMA_REQUIRED = {
    "hidden_size": "hidden_size",
    "intermediate_size": "intermediate_size",
    "num_attention_heads": "num_attention_heads",
    "num_hidden_layers": "num_hidden_layers",
}


def gpt_config_from_json(data: dict, file: str = "gpt/config.json") -> GPTConfig:
    """An HF LlamaConfig dict -> GPTConfig, refusing features this backbone does not implement."""
    missing = [k for k in _LLAMA_REQUIRED if k not in data]
    if missing:
        raise CheckpointError(f"{file}: missing LLaMA fields {missing}")
    unsupported = []
    if data.get("hidden_act", "silu") != "silu":
        unsupported.append(f"hidden_act={data['hidden_act']!r} (expected 'silu')")
    if data.get("rope_scaling") not in (None, {}):
        unsupported.append(f"rope_scaling={data['rope_scaling']!r} (expected null)")
    if data.get("attention_bias", False) or data.get("mlp_bias", False):
        unsupported.append("attention_bias/mlp_bias (expected false)")
    if data.get("head_dim") not in (None, data["hidden_size"] // data["num_attention_heads"]):
        unsupported.append(f"head_dim={data['head_dim']} (expected hidden_size / num_attention_heads)")
    if unsupported:
        raise CheckpointError(f"{file}: unsupported LLaMA settings: {'; '.join(unsupported)}")
    rope_theta = data.get("rope_theta")
    if rope_theta is None:
        rope_theta = (data.get("rope_parameters") or {}).get("rope_theta", 10_000.0)
    return GPTConfig(
        hidden_size=int(data["hidden_size"]),
        intermediate_size=int(data["intermediate_size"]),
        num_attention_heads=int(data["num_attention_heads"]),
        num_key_value_heads=int(data.get("num_key_value_heads") or data["num_attention_heads"]),
        num_hidden_layers=int(data["num_hidden_layers"]),
        rms_norm_eps=float(data.get("rms_norm_eps", 1e-6)),
        rope_theta=float(rope_theta),
        max_position_embeddings=int(data.get("max_position_embeddings", 4096)),
    )


def gpt_config_to_json(config: GPTConfig) -> dict:
    """GPTConfig -> the config.json an HF `LlamaModel` (and upstream ChatTTS) loads."""
    return {
        "architectures": ["LlamaModel"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": config.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": config.intermediate_size,
        "max_position_embeddings": config.max_position_embeddings,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": config.num_attention_heads,
        "num_hidden_layers": config.num_hidden_layers,
        "num_key_value_heads": config.num_key_value_heads,
        "pretraining_tp": 1,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_scaling": None,
        "rope_theta": config.rope_theta,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": False,
        "vocab_size": 32000,
    }


def read_model_config(asset: Path) -> ModelConfig:
    """GPT shapes from gpt/config.json; the rest from raytts.json when present, else the official shapes."""
    gpt_file = asset / "gpt" / "config.json"
    try:
        gpt = gpt_config_from_json(json.loads(gpt_file.read_text()), str(gpt_file))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{gpt_file}: not valid JSON ({err})") from None
    extra_file = asset / RAYTTS_CONFIG
    if not extra_file.exists():
        full = ModelConfig.from_name("full")
        return ModelConfig(name="chattts", gpt=gpt, decoder=full.decoder, dvae=full.dvae, vocos=full.vocos)
    data = json.loads(extra_file.read_text())
    shapes = {k: v for k, v in data.items() if k in ("name", "decoder", "dvae", "vocos")}
    try:
        return ModelConfig.from_dict({**shapes, "gpt": asdict(gpt)})
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{extra_file}: {err}") from None


# --------------------------------------------------------------------------------------------------------------
# Files


def asset_dir(root: Path) -> Path:
    """Accept the repo root (holding asset/) or the asset folder itself."""
    for candidate in (root / "asset", root):
        if (candidate / "gpt" / "config.json").exists():
            return candidate
    raise CheckpointError(
        f"{root} is not a ChatTTS checkpoint: expected {root}/asset/gpt/config.json (the HF 2Noise/ChatTTS layout); "
        f"run `raytts make-checkpoint DIR` for a random one, or point --model at the folder that holds asset/"
    )


def _refuse_pickles(asset: Path) -> None:
    pickles = sorted(p.relative_to(asset).as_posix() for p in asset.rglob("*.pt"))
    missing_safetensors = [f for f in ASSET_FILES if not (asset / f).exists()]
    if pickles and missing_safetensors:
        raise CheckpointError(
            f"{asset} holds pickled checkpoints {pickles} but not {missing_safetensors}; raytts never unpickles. "
            f"Download the safetensors release of 2Noise/ChatTTS"
        )


def check_files(asset: Path) -> None:
    _refuse_pickles(asset)
    missing = [f for f in ASSET_FILES if not (asset / f).is_file()]
    if missing:
        raise CheckpointError(f"{asset}: missing checkpoint files {missing}; expected all of {list(ASSET_FILES)}")
