"""The whole ChatTTS-compatible model: GPT + embeddings/heads + Decoder + DVAE + Vocos as one module."""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .dvae import DVAE, HiddenDecoder
from .embed import Embed
from .gpt import LlamaBackbone
from .vocos import Vocos


class ChatTTSModel(nn.Module):
    """GPT backbone + embeddings/heads + hidden-state Decoder + DVAE + Vocos of one model."""

    def __init__(self, config: ModelConfig, fsq_variant: str = "classic") -> None:
        super().__init__()
        self.config = config
        self.gpt = LlamaBackbone(config.gpt)
        self.embed = Embed(config.gpt)
        self.decoder = HiddenDecoder(config.decoder)
        self.dvae = DVAE(config.dvae, fsq_variant)
        self.vocos = Vocos(config.vocos)

    def reset_derived_buffers(self, device: torch.device | str) -> None:
        """Recompute buffers that are functions of the config (not stored in checkpoints) on `device`."""
        self.gpt.reset_derived_buffers(device)
        self.dvae.vq_layer.reset_derived_buffers(device)

    @property
    def device(self) -> torch.device:
        return self.embed.head_code.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The model's compute dtype (hidden states, KV cache); the code heads may stay float32."""
        return self.embed.emb_text.weight.dtype
