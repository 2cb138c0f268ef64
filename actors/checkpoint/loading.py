"""Loading a checkpoint into raytts' modules: built on the meta device, every tensor mapped by `layout`'s key maps,
and `load_state_dict(assign=True)` strict: a missing, unknown or misshapen key is an error naming the file, the key
and what was expected. Only safetensors are read."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from ..model.chattts import ChatTTSModel
from ..model.config import ModelConfig
from .layout import FILE_OF_PREFIX, TENSOR_FILES, CheckpointError, fold_heads, read_model_config

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
    for spec in TENSOR_FILES:
        tensors = _read_tensors(asset / spec.path)
        if spec.path == "Embed.safetensors":
            tensors = fold_heads(tensors, config.gpt.num_vq, spec.path)
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
        files = sorted({FILE_OF_PREFIX[key.split(".", 1)[0]] for key in missing})
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
