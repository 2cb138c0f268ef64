"""Mel decoders of ChatTTS: the hidden-state Decoder, the DVAE (codes <-> mel) and its grouped residual FSQ.

Pure modules. Every convolution with a kernel wider than one frame takes an optional `mask` [B, 1, T] that
zeroes frames past each row's length first, so a row decoded inside a padded batch gives exactly the samples it
gives alone (zero padding is what the convolution would have seen at the row's end).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import ConvNeXtStackConfig, DecoderConfig, DVAEConfig, FSQConfig
from .mel import LogMel


def apply_mask(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return x if mask is None else x * mask


class ConvNeXtBlock(nn.Module):
    """Depthwise dilated conv -> LayerNorm -> Linear 4x -> GELU -> Linear -> learned scale `weight`, residual."""

    def __init__(self, dim: int, intermediate: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel, padding=dilation * (kernel // 2), dilation=dilation, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, intermediate)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(intermediate, dim)
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        y = self.dwconv(apply_mask(x, mask)).transpose(1, 2)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        y = y * self.weight
        return x + y.transpose(1, 2)


class ConvNeXtStack(nn.Module):
    """Upstream's `DVAEDecoder` (also used as the DVAE encoder)."""

    def __init__(self, config: ConvNeXtStackConfig) -> None:
        super().__init__()
        self.conv_in = nn.Sequential(
            nn.Conv1d(config.idim, config.bn_dim, 3, 1, 1),
            nn.GELU(),
            nn.Conv1d(config.bn_dim, config.hidden, 3, 1, 1),
        )
        self.decoder_block = nn.ModuleList(
            [
                ConvNeXtBlock(config.hidden, config.hidden * 4, config.kernel, config.dilation)
                for _ in range(config.n_layer)
            ]
        )
        self.conv_out = nn.Conv1d(config.hidden, config.odim, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        conv_a, act, conv_b = self.conv_in
        y = conv_b(apply_mask(act(conv_a(apply_mask(x, mask))), mask))
        for block in self.decoder_block:
            y = block(y, mask)
        return self.conv_out(y)


def split_hidden(features: torch.Tensor) -> torch.Tensor:
    """[B, 2C, T] -> [B, C, 2T]: each step's vector is two mel-rate frames, interleaved in time."""
    batch, channels, steps = features.shape
    return features.view(batch, 2, channels // 2, steps).permute(0, 2, 3, 1).flatten(2)


class HiddenDecoder(nn.Module):
    """GPT hidden states [B, H, T] -> mel [B, n_mels, 2T] (the default, higher-quality path)."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.decoder = ConvNeXtStack(config.stack)
        self.out_conv = nn.Conv1d(config.stack.odim, config.n_mels, 3, 1, 1, bias=False)
        self.register_buffer("coef", torch.ones(1, config.n_mels, 1))

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """hidden [B, H, T]; `mask` [B, 1, 2T] marks each row's real mel frames."""
        mel = self.out_conv(apply_mask(self.decoder(split_hidden(hidden), mask), mask))
        return mel * self.coef


class GroupedResidualFSQ(nn.Module):
    """Finite scalar quantiser: `groups` groups, each a residual stack of `num_quantizers` FSQ layers.

    Only the learned projections are parameters (keys rvqs.{g}.project_in / project_out). Two numerics exist in
    the wild because vector-quantize-pytorch changed them: "classic" (<= 1.14: residual scales (L-1)^-q, tanh
    bound) is what the ChatTTS DVAE was trained with; "symmetric" (>= 1.2x: scales L^-q, tanh soft clamp then a
    hard clamp) is what a fresh install of upstream chattts gets today.
    """

    def __init__(self, config: FSQConfig, variant: str = "classic") -> None:
        super().__init__()
        if variant not in ("classic", "symmetric"):
            raise ValueError(f"FSQ variant must be 'classic' or 'symmetric', got {variant!r}")
        self.variant = variant
        self.groups = config.groups
        self.num_quantizers = config.num_quantizers
        codebook_dim = len(config.levels)
        group_dim = config.dim // config.groups
        self.rvqs = nn.ModuleList()
        for _ in range(config.groups):
            rvq = nn.Module()
            rvq.project_in = nn.Linear(group_dim, codebook_dim)
            rvq.project_out = nn.Linear(codebook_dim, group_dim)
            self.rvqs.append(rvq)
        self.config = config
        self.reset_derived_buffers("cpu")

    def reset_derived_buffers(self, device: torch.device | str) -> None:
        levels = torch.tensor(self.config.levels, dtype=torch.float32, device=device)
        base = levels - 1 if self.variant == "classic" else levels
        scales = torch.stack([base**-q for q in range(self.num_quantizers)])
        basis = [math.prod(self.config.levels[:i]) for i in range(len(self.config.levels))]
        self.register_buffer("levels", levels, persistent=False)
        self.register_buffer("scales", scales, persistent=False)
        self.register_buffer("basis", torch.tensor(basis, dtype=torch.int64, device=device), persistent=False)

    def _codes_from_levels(self, level_index: torch.Tensor) -> torch.Tensor:
        if self.variant == "classic":
            half_width = torch.div(self.levels, 2, rounding_mode="floor")
            return (level_index - half_width) / half_width
        return level_index * (2.0 / (self.levels - 1)) - 1.0

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """indices [B, G*R, T] (streams g0r0, g0r1, g1r0, ...) -> features [B, dim, T]."""
        batch, _, steps = indices.shape
        per_group = indices.view(batch, self.groups, self.num_quantizers, steps).permute(1, 0, 3, 2)
        outputs = []
        for group, rvq in enumerate(self.rvqs):
            idx = per_group[group].long().unsqueeze(-1)  # [B, T, R, 1]
            level_index = torch.div(idx, self.basis, rounding_mode="floor") % self.levels.long()
            codes = self._codes_from_levels(level_index.float()) * self.scales  # [B, T, R, D]
            outputs.append(rvq.project_out(codes.sum(2)))
        return torch.cat(outputs, dim=-1).transpose(1, 2)

    def _bound(self, z: torch.Tensor) -> torch.Tensor:
        """Classic FSQ squashing of z into (-(L-1)/2, (L-1)/2) per dimension, before rounding."""
        half_l = (self.levels - 1) * (1 + 1e-3) / 2
        offset = torch.where(self.levels.remainder(2) == 0, 0.5, 0.0)
        shift = (offset / half_l).atanh()
        return (z + shift).tanh() * half_l - offset

    def _quantize_levels(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised codes in [-1, 1] for z [..., D]."""
        if self.variant == "classic":
            return self._bound(z).round() / torch.div(self.levels, 2, rounding_mode="floor")
        steps = self.levels - 1
        bracket = torch.floor(steps * (z.clamp(-1.0, 1.0) + 1) / 2.0 + 0.5)
        return (2.0 / steps) * bracket - 1.0

    def _level_index(self, codes: torch.Tensor) -> torch.Tensor:
        if self.variant == "classic":
            half_width = torch.div(self.levels, 2, rounding_mode="floor")
            return codes * half_width + half_width
        return (codes + 1.0) / (2.0 / (self.levels - 1))

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        """features [B, dim, T] -> indices [B, G*R, T] as int64."""
        chunks = features.transpose(1, 2).to(self.rvqs[0].project_in.weight.dtype).chunk(self.groups, dim=-1)
        streams = []
        for rvq, chunk in zip(self.rvqs, chunks, strict=True):
            residual = rvq.project_in(chunk)
            if self.variant == "classic":
                residual = self._bound(residual)  # the residual stack starts from the bounded projection
            else:
                clamp = 1 + 1 / (self.levels - 1)
                residual = (residual / clamp).tanh() * clamp
            for q in range(self.num_quantizers):
                scale = self.scales[q]
                codes = self._quantize_levels(residual / scale)
                index = (self._level_index(codes) * self.basis).sum(-1)
                streams.append(index.round().long() if self.variant == "symmetric" else index.long())
                residual = residual - codes * scale
        return torch.stack(streams, dim=1)


class DVAE(nn.Module):
    """Codes [B, 4, T] -> mel [B, n_mels, 2T]; and reference log-mel -> codes through `encoder` + `vq_layer`."""

    def __init__(self, config: DVAEConfig, fsq_variant: str = "classic") -> None:
        super().__init__()
        dim = config.dim
        self.downsample_conv = nn.Sequential(
            nn.Conv1d(config.n_mels, dim, 3, 1, 1),
            nn.GELU(),
            nn.Conv1d(dim, dim, 4, 2, 1),
            nn.GELU(),
        )
        self.encoder = ConvNeXtStack(config.encoder)
        self.decoder = ConvNeXtStack(config.decoder)
        self.out_conv = nn.Conv1d(config.decoder.odim, config.n_mels, 3, 1, 1, bias=False)
        self.vq_layer = GroupedResidualFSQ(config.vq, fsq_variant)
        self.preprocessor_mel = LogMel(n_mels=config.n_mels)
        self.register_buffer("coef", torch.ones(1, config.n_mels, 1))

    def forward(self, codes: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """codes [B, 4, T] -> mel [B, n_mels, 2T]; `mask` [B, 1, 2T] marks each row's real mel frames."""
        features = split_hidden(self.vq_layer.decode(codes)).to(self.out_conv.weight.dtype)
        mel = self.out_conv(apply_mask(self.decoder(features, mask), mask))
        return mel * self.coef

    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """24 kHz mono waveform [samples] of one utterance -> codes [4, (1 + samples // 256) // 2]."""
        log_mel = self.preprocessor_mel(audio)
        x = self.downsample_conv((log_mel / self.coef[0]).to(self.out_conv.weight.dtype).unsqueeze(0))
        return self.vq_layer.encode(self.encoder(x))[0]
