"""Incremental waveform decoding for streaming: emit audio while a row is still generating.

The Decoder (or DVAE) and Vocos are non-causal convolution stacks followed by an overlap-add ISTFT, so a sample
is final once every mel frame within the chain's receptive field on both sides is known. Each `push` decodes a
window that starts one receptive field before the first unsent sample and ends at the newest frame, and emits
only the samples that can no longer change. The joined stream therefore equals the one-shot waveform (up to
float rounding); the work per chunk is bounded by the window, not by the length so far (upstream re-decodes the
whole prefix for every chunk).
"""

from __future__ import annotations

import torch

from ..model.chattts import ChatTTSModel
from ..model.config import ModelConfig
from .generate import decode_waveforms


def receptive_field_mel_frames(config: ModelConfig, use_decoder: bool) -> int:
    """Mel frames on each side that one output frame of Decoder/DVAE + Vocos backbone depends on."""
    stack = config.decoder.stack if use_decoder else config.dvae.decoder
    decoder = 1 + 1 + stack.n_layer * stack.dilation * (stack.kernel // 2) + 1  # conv_in x2, blocks, out_conv
    vocos = 3 + config.vocos.num_layers * 3  # embed conv k7, blocks k7
    return decoder + vocos


class StreamDecoder:
    """One row's incremental decoder. Feed it the row's hidden states (or codes) so far; it returns new audio."""

    def __init__(self, model: ChatTTSModel, use_decoder: bool = True) -> None:
        self.model = model
        self.use_decoder = use_decoder
        config = model.config
        self.hop = config.vocos.hop_length
        self.edge = config.vocos.n_fft // self.hop // 2  # frames whose overlap-add reaches a sample
        self.context = receptive_field_mel_frames(config, use_decoder)
        self.sent = 0  # samples emitted so far
        self.steps_seen = 0  # generation steps the caller has pushed (bookkeeping for callers)

    @torch.inference_mode()
    def push(self, rows: torch.Tensor, final: bool = False) -> torch.Tensor:
        """rows [T, H] (hidden) or [T, num_vq] (codes) so far -> the newly final samples (float32, device)."""
        steps = int(rows.shape[0])
        if steps == 0:
            return torch.zeros(0, device=self.model.device)
        total = 2 * self.hop * steps - self.hop  # one-shot length of `steps` steps
        if final:
            end = total
        else:
            # Mel frames that will not change: the last `context` frames still wait for frames to their right.
            final_frames = 2 * steps - self.context
            end = max(0, (final_frames - self.edge) * self.hop)
        end = min(end, total)
        if end <= self.sent:
            return torch.zeros(0, device=self.model.device)
        # Window start: far enough left that the first unsent sample sees its whole receptive field.
        first_frame = max(0, self.sent // self.hop - self.edge - self.context)
        first_step = first_frame // 2
        window = decode_waveforms(self.model, [rows[first_step:]], self.use_decoder)[0]
        offset = first_step * 2 * self.hop  # global sample index of window sample 0
        chunk = window[self.sent - offset : end - offset]
        self.sent = end
        return chunk
