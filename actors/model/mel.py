"""Log-mel features of 24 kHz audio, as the ChatTTS DVAE encoder (and Vocos training) computed them."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import HOP_LENGTH, N_FFT, N_MELS, SAMPLE_RATE


def hz_to_mel(freq: float) -> float:
    return 2595.0 * math.log10(1.0 + freq / 700.0)


def mel_filterbank(
    n_freqs: int = N_FFT // 2 + 1, n_mels: int = N_MELS, sample_rate: int = SAMPLE_RATE, device: str = "cpu"
) -> torch.Tensor:
    """HTK-scale triangular filters without area normalisation, [n_freqs, n_mels] (torchaudio's default)."""
    all_freqs = torch.linspace(0, sample_rate // 2, n_freqs, device=device)
    mel_points = torch.linspace(hz_to_mel(0.0), hz_to_mel(float(sample_rate // 2)), n_mels + 2, device=device)
    freq_points = 700.0 * (10 ** (mel_points / 2595.0) - 1.0)
    widths = freq_points[1:] - freq_points[:-1]
    slopes = freq_points.unsqueeze(0) - all_freqs.unsqueeze(1)
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    return torch.clamp(torch.min(down, up), min=0.0)


class LogMel(nn.Module):
    """Waveform -> natural-log magnitude mel spectrogram (power 1, centred reflect-padded STFT, floor 1e-5).

    `window` and `fb` are buffers so a checkpoint's own values (DVAE.safetensors stores both) are used.
    """

    def __init__(self, n_fft: int = N_FFT, hop_length: int = HOP_LENGTH, n_mels: int = N_MELS) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.hop_length = hop_length
        # Computed on the CPU even inside a meta-device build (meta math would import torch's decompositions):
        # the defaults for a model built without a checkpoint; loading replaces both.
        self.register_buffer("window", torch.hann_window(n_fft, device="cpu"))
        self.register_buffer("fb", mel_filterbank(n_fft // 2 + 1, n_mels, device="cpu"))

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """audio [..., samples] float32 -> [..., n_mels, 1 + samples // hop]."""
        spec = torch.stft(
            audio.float(),
            self.n_fft,
            self.hop_length,
            window=self.window.float(),
            center=True,
            pad_mode="reflect",
            return_complex=True,
        ).abs()
        mel = torch.matmul(spec.transpose(-1, -2), self.fb.float()).transpose(-1, -2)
        return torch.log(torch.clamp(mel, min=1e-5))
