"""Dataclass configs for the ChatTTS-compatible modules, and the named presets.

This module owns the *shapes* of the model. It knows nothing about files: `actors.checkpoint` maps a checkpoint
on disk to these configs. `ModelConfig.from_name("full")` is the public 2Noise/ChatTTS model; `"tiny"` is the same
architecture at toy widths so tests and smoke runs exercise every code path in seconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any

SAMPLE_RATE = 24_000
N_FFT = 1024
HOP_LENGTH = 256
N_MELS = 100
# One GPT step emits 4 codes = 2 mel frames = 2 * HOP_LENGTH samples.
SAMPLES_PER_FRAME = 2 * HOP_LENGTH
STEPS_PER_SECOND = SAMPLE_RATE / SAMPLES_PER_FRAME  # 46.875
NUM_VQ = 4  # codebooks: every GPT step emits one code of each (the public model; configs may say otherwise)


def frames_to_samples(frames: int) -> int:
    """Waveform length of `frames` GPT steps: 2*frames mel frames through a centred ISTFT."""
    return max(0, SAMPLES_PER_FRAME * frames - HOP_LENGTH) if frames > 0 else 0


@dataclass(frozen=True)
class GPTConfig:
    """LLaMA backbone of the code generator (HF LlamaConfig field names, as in asset/gpt/config.json)."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_attention_heads: int = 12
    num_key_value_heads: int = 12
    num_hidden_layers: int = 20
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10_000.0
    max_position_embeddings: int = 4096
    num_text_tokens: int = 21178
    num_audio_tokens: int = 626
    num_vq: int = NUM_VQ

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def eos_code(self) -> int:
        return self.num_audio_tokens - 1

    def kv_bytes_per_token(self, bytes_per_element: int) -> int:
        """Bytes of K and V cache one token occupies across all layers."""
        kv_dim = self.num_key_value_heads * self.head_dim
        return 2 * self.num_hidden_layers * kv_dim * bytes_per_element


@dataclass(frozen=True)
class ConvNeXtStackConfig:
    """Upstream's `DVAEDecoder`: conv_in (idim -> bn_dim -> hidden), n_layer ConvNeXt blocks, conv_out -> odim."""

    idim: int
    odim: int
    hidden: int
    n_layer: int
    bn_dim: int
    kernel: int = 7
    dilation: int = 2


@dataclass(frozen=True)
class FSQConfig:
    """Grouped residual finite scalar quantiser of the DVAE."""

    dim: int = 1024
    levels: tuple[int, ...] = (5, 5, 5, 5)
    groups: int = 2
    num_quantizers: int = 2

    @property
    def num_streams(self) -> int:
        return self.groups * self.num_quantizers


@dataclass(frozen=True)
class DecoderConfig:
    """Hidden-state decoder: GPT hidden [B, H, T] -> split to [B, H/2, 2T] -> ConvNeXt stack -> 100-bin mel."""

    stack: ConvNeXtStackConfig = ConvNeXtStackConfig(idim=384, odim=384, hidden=512, n_layer=12, bn_dim=128)
    n_mels: int = N_MELS


@dataclass(frozen=True)
class DVAEConfig:
    """Codes <-> mel autoencoder; its encoder turns reference audio into prompt codes."""

    encoder: ConvNeXtStackConfig = ConvNeXtStackConfig(idim=512, odim=1024, hidden=256, n_layer=12, bn_dim=128)
    decoder: ConvNeXtStackConfig = ConvNeXtStackConfig(idim=512, odim=512, hidden=256, n_layer=12, bn_dim=128)
    vq: FSQConfig = FSQConfig()
    n_mels: int = N_MELS

    @property
    def dim(self) -> int:
        return self.decoder.idim


@dataclass(frozen=True)
class VocosConfig:
    """Vocos vocoder: ConvNeXt backbone + ISTFT head (mel -> 24 kHz waveform)."""

    input_channels: int = N_MELS
    dim: int = 512
    intermediate_dim: int = 1536
    num_layers: int = 8
    n_fft: int = N_FFT
    hop_length: int = HOP_LENGTH


@dataclass(frozen=True)
class ModelConfig:
    """Every shape of one ChatTTS-compatible model."""

    name: str = "full"
    gpt: GPTConfig = GPTConfig()
    decoder: DecoderConfig = DecoderConfig()
    dvae: DVAEConfig = DVAEConfig()
    vocos: VocosConfig = VocosConfig()
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.gpt.hidden_size % 2 or self.decoder.stack.idim * 2 != self.gpt.hidden_size:
            raise ValueError(
                f"decoder input width {self.decoder.stack.idim} must be half the GPT hidden size "
                f"{self.gpt.hidden_size} (the hidden state is split into two mel-rate frames)"
            )
        if self.dvae.vq.dim != 2 * self.dvae.decoder.idim:
            raise ValueError(f"DVAE vq dim {self.dvae.vq.dim} must be twice the DVAE decoder width")
        if self.dvae.vq.num_streams != self.gpt.num_vq:
            raise ValueError(f"DVAE has {self.dvae.vq.num_streams} code streams but GPT emits {self.gpt.num_vq}")

    @classmethod
    def from_name(cls, name: str) -> ModelConfig:
        try:
            return PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown model preset {name!r}; expected one of {sorted(PRESETS)}") from None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("extra")
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return _build(cls, data)


def _build(kind: type, data: Any) -> Any:
    if not is_dataclass(kind):
        return tuple(data) if isinstance(data, list) else data
    known = {f.name: f for f in fields(kind)}
    unknown = set(data) - set(known)
    if unknown:
        raise ValueError(f"unknown {kind.__name__} fields {sorted(unknown)}; expected a subset of {sorted(known)}")
    kwargs = {}
    for name, value in data.items():
        sub = known[name].type
        sub_kind = _CONFIG_TYPES.get(sub if isinstance(sub, str) else getattr(sub, "__name__", ""))
        kwargs[name] = _build(sub_kind, value) if sub_kind is not None and isinstance(value, dict) else value
        if isinstance(kwargs[name], list):
            kwargs[name] = tuple(kwargs[name])
    return kind(**kwargs)


_CONFIG_TYPES: dict[str, type] = {
    c.__name__: c
    for c in (GPTConfig, ConvNeXtStackConfig, FSQConfig, DecoderConfig, DVAEConfig, VocosConfig, ModelConfig)
}

FULL = ModelConfig()

# Same architecture, toy widths: head_dim stays 64 and every interface (626 codes, 4 streams, 100 mels,
# n_fft 1024, hop 256, the 21178-token vocabulary) is the real one.
TINY = ModelConfig(
    name="tiny",
    gpt=GPTConfig(
        hidden_size=128,
        intermediate_size=256,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_hidden_layers=2,
        max_position_embeddings=4096,
    ),
    decoder=DecoderConfig(stack=ConvNeXtStackConfig(idim=64, odim=64, hidden=64, n_layer=2, bn_dim=32)),
    dvae=DVAEConfig(
        encoder=ConvNeXtStackConfig(idim=64, odim=128, hidden=32, n_layer=2, bn_dim=32),
        decoder=ConvNeXtStackConfig(idim=64, odim=64, hidden=32, n_layer=2, bn_dim=32),
        vq=FSQConfig(dim=128),
    ),
    vocos=VocosConfig(dim=64, intermediate_dim=192, num_layers=2),
)

PRESETS: dict[str, ModelConfig] = {"full": FULL, "tiny": TINY}
