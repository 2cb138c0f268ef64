"""Vocos vocoder (mel -> 24 kHz waveform) and the log-mel front end shared with the DVAE encoder.

Pure modules. The ISTFT is batched with per-row frame counts: frames past a row's end contribute neither signal
nor window energy, so each row equals its own unbatched `torch.istft(center=True)` output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import VocosConfig
from .dvae import apply_mask


class ConvNeXtBlock(nn.Module):
    """Vocos' block: like the DVAE one but kernel 7 without dilation and the scale is named `gamma`."""

    def __init__(self, dim: int, intermediate: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, intermediate)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(intermediate, dim)
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        y = self.dwconv(apply_mask(x, mask)).transpose(1, 2)
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + y.transpose(1, 2)


class VocosBackbone(nn.Module):
    def __init__(self, config: VocosConfig) -> None:
        super().__init__()
        self.embed = nn.Conv1d(config.input_channels, config.dim, kernel_size=7, padding=3)
        self.norm = nn.LayerNorm(config.dim, eps=1e-6)
        self.convnext = nn.ModuleList(
            [ConvNeXtBlock(config.dim, config.intermediate_dim) for _ in range(config.num_layers)]
        )
        self.final_layer_norm = nn.LayerNorm(config.dim, eps=1e-6)

    def forward(self, mel: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """mel [B, n_mels, F] -> features [B, F, dim]."""
        x = self.norm(self.embed(apply_mask(mel, mask)).transpose(1, 2)).transpose(1, 2)
        for block in self.convnext:
            x = block(x, mask)
        return self.final_layer_norm(x.transpose(1, 2))


class ISTFTHead(nn.Module):
    def __init__(self, config: VocosConfig) -> None:
        super().__init__()
        self.n_fft = config.n_fft
        self.hop_length = config.hop_length
        self.out = nn.Linear(config.dim, config.n_fft + 2)
        self.register_buffer("window", torch.hann_window(config.n_fft, device="cpu"))  # see LogMel: no meta math

    def forward(self, features: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        """features [B, F, dim] -> waveform [B, hop*(F-1)]; `frames` [B] = real frames per row (default F)."""
        x = self.out(features).transpose(1, 2).float()
        log_mag, phase = x.chunk(2, dim=1)
        magnitude = torch.exp(log_mag).clip(max=1e2)
        spec = torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase))
        return istft(spec, self.window.float(), self.hop_length, frames)


class Vocos(nn.Module):
    def __init__(self, config: VocosConfig) -> None:
        super().__init__()
        self.backbone = VocosBackbone(config)
        self.head = ISTFTHead(config)

    def forward(self, mel: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        """mel [B, n_mels, F] -> float32 waveform [B, hop*(F-1)]; `frames` [B] = real mel frames per row."""
        mask = None
        if frames is not None:
            mask = frame_mask(frames, mel.shape[-1]).to(mel.dtype)
        return self.head(self.backbone(mel, mask), frames)


def frame_mask(frames: torch.Tensor, total: int) -> torch.Tensor:
    """[B] lengths -> [B, 1, total] with 1 where the frame index is below the row's length."""
    return (torch.arange(total, device=frames.device).view(1, 1, total) < frames.view(-1, 1, 1)).to(torch.float32)


def istft(spec: torch.Tensor, window: torch.Tensor, hop: int, frames: torch.Tensor | None = None) -> torch.Tensor:
    """Centred inverse STFT of a batch whose rows may have fewer real frames than `spec` holds."""
    batch, _, total = spec.shape
    n_fft = window.shape[0]
    if frames is None:
        frames = torch.full((batch,), total, device=spec.device)
    valid = frame_mask(frames, total).to(spec.device)  # [B, 1, F]
    chunks = torch.fft.irfft(spec, n_fft, dim=1) * window.view(1, -1, 1) * valid
    length = (total - 1) * hop + n_fft
    signal = F.fold(chunks, output_size=(1, length), kernel_size=(1, n_fft), stride=(1, hop))[:, 0, 0]
    energy = window.square().view(1, -1, 1) * valid
    envelope = F.fold(energy, output_size=(1, length), kernel_size=(1, n_fft), stride=(1, hop))[:, 0, 0]
    half = n_fft // 2
    signal = signal[:, half : length - half]
    envelope = envelope[:, half : length - half]
    return signal / torch.where(envelope > 1e-11, envelope, torch.ones_like(envelope))
