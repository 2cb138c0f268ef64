"""The one place that knows ChatTTS checkpoint files: where they are, what keys they hold, how they map.

A checkpoint is the HF repo 2Noise/ChatTTS layout: `asset/gpt/{config.json,model.safetensors}`,
`asset/{Embed,Decoder,DVAE,Vocos}.safetensors`, `asset/tokenizer/{tokenizer.json,tokenizer_config.json,
special_tokens_map.json}`. raytts' own random checkpoints add `asset/raytts.json` (the non-GPT shapes, which the
official model takes from code). Sources: a local folder, any smart-open URI (s3://, gs://, azure://, ...;
copied once into a local cache), the HF hub (`hf://2Noise/ChatTTS[@revision]`), or `tiny` (a built-in random model).

Loading is strict: every tensor of every file must map to a parameter with the expected shape, and every
parameter must be filled; otherwise the error names the file, the key and what was expected. Only safetensors
are read; pickled `.pt` files are refused.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from .model.chattts import ChatTTSModel
from .model.config import GPTConfig, ModelConfig

log = logging.getLogger(__name__)

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

# sha256 of the nine official files (published by upstream ChatTTS in res/sha256_map.json).
OFFICIAL_SHA256 = {
    "Decoder.safetensors": "77aa55e0a977949c4733df3c6f876fa85860d3298cba63295a7bc6901729d4e0",
    "DVAE.safetensors": "1d0b044a8368c0513100a2eca98456b289e6be6a18b7a63be1bcaa315ea874d9",
    "Embed.safetensors": "2ff0be7134934155741b643b74e32fb6bf3eec41257984459b2ed60cdb4c48b0",
    "Vocos.safetensors": "07e5561491cce41f7f90cfdb94b2ff263ff5742c3d89339db99b17ad82cc3f44",
    "gpt/config.json": "0aaa1ecd96c49ad4f473459eb1982fa7ad79fa5de08cde2781bf6ad1f9a0c236",
    "gpt/model.safetensors": "cd0806fd971f52f6a22c923ec64982b305e817bcc41ca83417fcf9141b984a0f",
    "tokenizer/special_tokens_map.json": "bd0ac9d9bb1657996b5c5fbcaa7d80f8de530d01a283da97f89deae5b1b8d011",
    "tokenizer/tokenizer_config.json": "43e9d658b554fa5ee8d8e1d763349323bfef1ed7a89c0794220ab8861387d421",
    "tokenizer/tokenizer.json": "843838a64e121e23e774cc75874c6fe862198d9f7dd43747914633a8fd89c20e",
}


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


_WEIGHT_NORM = re.compile(r"^(head_text|head_code\.(\d+))\.parametrizations\.weight\.original([01])$")


@dataclass(frozen=True)
class _FileSpec:
    path: str
    key_map: Callable[[str], str | None]


_TENSOR_FILES = (
    _FileSpec("gpt/model.safetensors", _gpt_key),
    _FileSpec("Embed.safetensors", _identity("embed.")),
    _FileSpec("Decoder.safetensors", _identity("decoder.")),
    _FileSpec("DVAE.safetensors", _dvae_key),
    _FileSpec("Vocos.safetensors", _vocos_key),
)


_FILE_OF_PREFIX = {
    "gpt": "gpt/model.safetensors",
    "embed": "Embed.safetensors",
    "decoder": "Decoder.safetensors",
    "dvae": "DVAE.safetensors",
    "vocos": "Vocos.safetensors",
}


def _fold_heads(tensors: dict[str, torch.Tensor], num_vq: int, file: str) -> dict[str, torch.Tensor]:
    """Weight-normed heads (g = original0 [out, 1], v = original1 [out, in]) -> plain weights; code heads merged."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    out: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        match = _WEIGHT_NORM.match(key)
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
# Locating a checkpoint


def default_cache_dir() -> Path:
    root = os.environ.get("RAYTTS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "raytts"
    )
    return Path(root)


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


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime): verifying and fingerprinting read each file once."""
    stat = Path(path).stat()
    return _sha256(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def official_mismatches(asset: Path) -> list[str]:
    """The checkpoint files whose sha256 differs from the official 2Noise/ChatTTS release (empty: it is that release).
    A checkpoint with raytts.json (raytts' own random ones) is never the official release."""
    if (asset / RAYTTS_CONFIG).exists():
        return sorted(OFFICIAL_SHA256)
    return [name for name, expected in OFFICIAL_SHA256.items() if file_sha256(asset / name) != expected]


def verify_official(asset: Path, source: str) -> None:
    """Raise unless every file is the official release's (what hf://2Noise/ChatTTS downloads, or --verify always)."""
    mismatches = official_mismatches(asset)
    if not mismatches:
        return
    name = mismatches[0]
    raise CheckpointError(
        f"{asset / name}: sha256 {file_sha256(asset / name)} does not match the official 2Noise/ChatTTS file "
        f"({OFFICIAL_SHA256[name]}) that {source!r} was checked against ({len(mismatches)} of {len(OFFICIAL_SHA256)} "
        f"files differ). A corrupt or partial download: delete it and fetch {HF_REPO}@{HF_REVISION} again. "
        f"Fine-tuned or community weights: load them with --verify never (engine.verify: never in a job config, "
        f"models.<name>.verify: never in a serve config)"
    )


def _copy_from_uri(uri: str, cache_dir: Path) -> Path:
    """Copy the checkpoint files under `uri` into the cache once; return the local asset folder."""
    from smart_open import open as sopen

    base = uri.rstrip("/")
    local = cache_dir / "uri" / hashlib.sha256(base.encode()).hexdigest()[:16]
    done = local / ".complete"
    if done.exists():
        return asset_dir(local)
    prefixes = (base + "/asset", base)
    last_error: Exception | None = None
    for prefix in prefixes:
        try:
            with sopen(f"{prefix}/gpt/config.json", "rb") as f:
                f.read(1)
        except (OSError, ValueError) as err:  # smart-open raises these for a missing object
            last_error = err
            continue
        staging = Path(tempfile.mkdtemp(prefix="download-", dir=_ensure(cache_dir)))
        try:
            for name in (*ASSET_FILES, RAYTTS_CONFIG):
                target = staging / "asset" / name
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    with sopen(f"{prefix}/{name}", "rb") as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 22)
                except (OSError, ValueError) as err:
                    target.unlink(missing_ok=True)
                    if name != RAYTTS_CONFIG:
                        raise CheckpointError(f"{prefix}/{name}: could not be read ({err})") from err
            (staging / ".complete").write_text(base)
            shutil.rmtree(local, ignore_errors=True)
            local.parent.mkdir(parents=True, exist_ok=True)
            staging.rename(local)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info("copied checkpoint %s into %s", prefix, local)
        return asset_dir(local)
    raise CheckpointError(f"{uri}: no gpt/config.json under {prefixes[0]}/ or {prefixes[1]}/ ({last_error})")


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _from_hub(spec: str, cache_dir: Path) -> Path:
    from huggingface_hub import snapshot_download

    repo, _, revision = spec.partition("@")
    revision = revision or (HF_REVISION if repo == HF_REPO else "main")
    path = snapshot_download(
        repo_id=repo,
        revision=revision,
        allow_patterns=["asset/*.safetensors", "asset/gpt/*", "asset/tokenizer/*", f"asset/{RAYTTS_CONFIG}"],
        cache_dir=str(cache_dir / "hf"),
    )
    return asset_dir(Path(path))


@dataclass(frozen=True)
class ResolvedCheckpoint:
    asset: Path
    source: str

    @functools.cached_property
    def official(self) -> bool:
        """Every file is the official 2Noise/ChatTTS release's (by sha256)."""
        return not official_mismatches(self.asset)

    @functools.cached_property
    def sha256(self) -> str:
        """One digest of the whole checkpoint: sha256 over each of its files' name and sha256 (raytts.json too)."""
        names = [*ASSET_FILES, *([RAYTTS_CONFIG] if (self.asset / RAYTTS_CONFIG).exists() else [])]
        listing = "".join(f"{name} {file_sha256(self.asset / name)}\n" for name in sorted(names))
        return hashlib.sha256(listing.encode()).hexdigest()

    @property
    def model_id(self) -> str:
        """What output rows record as their model: the source as given and the checkpoint's digest."""
        return f"{self.source}@sha256:{self.sha256[:16]}"


def resolve(model: str | os.PathLike | None, cache_dir: Path | None = None, verify: str = "auto") -> ResolvedCheckpoint:
    """Find (and if needed download) a checkpoint. `verify`: auto (what raytts downloads from hf://2Noise/ChatTTS
    must be the official files), always (any source must be), never. Other weights in the official layout load:
    fine-tuned and community checkpoints; their files' digest is the `model_id` rows record."""
    if verify not in ("auto", "always", "never"):
        raise ValueError(f"verify must be auto, always or never, got {verify!r}")
    cache_dir = cache_dir or default_cache_dir()
    spec = "tiny" if model is None else os.fspath(model)
    if spec == "tiny":
        from .make_checkpoint import builtin_tiny

        asset = asset_dir(builtin_tiny(cache_dir))
        official_download = False
    elif spec.startswith("hf://"):
        asset = _from_hub(spec[len("hf://") :], cache_dir)
        official_download = spec[len("hf://") :].partition("@")[0] == HF_REPO
    elif re.match(r"^[a-z][a-z0-9+.-]*://", spec) and not spec.startswith("file://"):
        asset = _copy_from_uri(spec, cache_dir)
        official_download = False
    else:
        path = Path(spec.removeprefix("file://")).expanduser()
        if not path.exists():
            raise CheckpointError(
                f"model {spec!r} is neither an existing folder, a URI (s3://, gs://, ...), hf://REPO[@REV] nor 'tiny'"
            )
        asset = asset_dir(path)
        official_download = False
    check_files(asset)
    checkpoint = ResolvedCheckpoint(asset=asset, source=spec)
    if verify == "always" or (verify == "auto" and official_download):
        verify_official(asset, spec)
    elif spec != "tiny" and _claims_official_config(asset) and not checkpoint.official:
        log.warning(
            "model %s: the official 2Noise/ChatTTS architecture with other weights (%s differ from the release); "
            "loading it as a fine-tuned or community checkpoint, recorded as %s",
            spec, ", ".join(official_mismatches(asset)), checkpoint.model_id,
        )  # fmt: skip
    return checkpoint


def _claims_official_config(asset: Path) -> bool:
    return not (asset / RAYTTS_CONFIG).exists() and (
        file_sha256(asset / "gpt/config.json") == OFFICIAL_SHA256["gpt/config.json"]
    )


# --------------------------------------------------------------------------------------------------------------
# Loading


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: f.get_tensor(key) for key in f.keys()}
    except Exception as err:  # safetensors raises its own SafetensorError type for any malformed header
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err


def map_state_dict(asset: Path, config: ModelConfig) -> dict[str, torch.Tensor]:
    """Read all tensor files and return a state dict keyed like `ChatTTSModel`."""
    state: dict[str, torch.Tensor] = {}
    for spec in _TENSOR_FILES:
        tensors = _read_tensors(asset / spec.path)
        if spec.path == "Embed.safetensors":
            tensors = _fold_heads(tensors, config.gpt.num_vq, spec.path)
        for key, value in tensors.items():
            mapped = spec.key_map(key)
            if mapped is None:
                continue
            if mapped in state:
                raise CheckpointError(f"{spec.path}: key {key!r} maps to {mapped!r}, which another file already set")
            state[mapped] = (key, spec.path, value)  # type: ignore[assignment]
    return state  # type: ignore[return-value]


_INIT_FUNCTIONS = ("normal_", "uniform_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_", "xavier_normal_",
                   "trunc_normal_", "zeros_", "ones_", "constant_")  # fmt: skip


@contextlib.contextmanager
def _skip_weight_init() -> Iterator[None]:
    """Module constructors' random initialisation is wasted on meta tensors that loading replaces, and meta
    random ops import torch's decomposition machinery (~1.5 s per replica start): make them no-ops meanwhile."""
    saved = {name: getattr(torch.nn.init, name) for name in _INIT_FUNCTIONS}
    try:
        for name in _INIT_FUNCTIONS:
            setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, function in saved.items():
            setattr(torch.nn.init, name, function)


def load_model(
    asset: Path,
    config: ModelConfig | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    fsq_variant: str = "classic",
) -> ChatTTSModel:
    """Build the model on the meta device and fill it from `asset`, strictly (see keep_fp32 for what stays fp32)."""
    config = config or read_model_config(asset)
    with torch.device("meta"), _skip_weight_init():
        model = ChatTTSModel(config, fsq_variant)
    expected = model.state_dict()
    found = map_state_dict(asset, config)
    missing = sorted(set(expected) - set(found))
    if missing:
        files = sorted({_FILE_OF_PREFIX[key.split(".", 1)[0]] for key in missing})
        raise CheckpointError(
            f"{asset}: {', '.join(files)} lack{'s' if len(files) == 1 else ''} {len(missing)} tensors the "
            f"{config.name!r} model needs: {_describe(missing)} (model parameter names)"
        )
    unknown = sorted(set(found) - set(expected))
    if unknown:
        names = [f"{found[k][1]}:{found[k][0]}" for k in unknown[:8]]  # type: ignore[index]
        raise CheckpointError(
            f"{asset}: {len(unknown)} unexpected tensors {names}{' ...' if len(unknown) > 8 else ''}; "
            f"is this a ChatTTS checkpoint of the expected size ({config.name})?"
        )
    state = {}
    for key, target in expected.items():
        source_key, file, value = found[key]  # type: ignore[misc]
        if tuple(value.shape) != tuple(target.shape):
            raise CheckpointError(
                f"{asset / file}: {source_key!r} has shape {tuple(value.shape)}, expected {tuple(target.shape)} "
                f"for model {config.name!r}"
            )
        # Numerically sensitive parts stay float32 in a half-precision model: output heads (logits), the GPT's
        # RMSNorm weights, the quantiser and the mel front end.
        keep_fp32 = key.startswith(("embed.head_", "dvae.vq_layer.", "dvae.preprocessor_mel.")) or (
            key.startswith("gpt.") and "norm" in key
        )
        state[key] = value.to(device=device, dtype=torch.float32 if keep_fp32 else dtype)
    model.load_state_dict(state, strict=True, assign=True)
    model.reset_derived_buffers(device)  # non-persistent buffers were built on the meta device
    model.eval().requires_grad_(False)
    return model


def _describe(keys: Iterable[str]) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:8])
    return shown + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")
