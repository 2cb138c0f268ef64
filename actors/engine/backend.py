"""What the engine needs of a model: the `ModelBackend` protocol, implemented by the torch model (through
`TorchBackend`) and by the onnx route's `OnnxChatTTS`. A new backend implements this and nothing else; the engine
never asks which backend it runs."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from ..model.attention import ReadGroup
from ..model.chattts import ChatTTSModel
from ..model.config import ModelConfig
from ..model.gpt import PagedKVCache
from .sampling import SamplingBatch, process_logits


class EmbedBackend(Protocol):
    def embed_text(self, ids: torch.Tensor) -> torch.Tensor: ...
    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor: ...
    def code_logits(self, hidden: torch.Tensor) -> torch.Tensor: ...
    def text_logits(self, hidden: torch.Tensor) -> torch.Tensor: ...


class GPTBackend(Protocol):
    def __call__(
        self,
        embeds: torch.Tensor,
        positions: torch.Tensor,
        cache: PagedKVCache,
        tables: torch.Tensor,
        groups: list[ReadGroup],
    ) -> torch.Tensor:
        """Normed hidden states of `embeds` [B, S, H] at `positions` [B, S] over the paged cache (the keys and values
        of the call are written into it; the reads are `groups`, turned into `actors.model.attention` metadata)."""
        ...


@runtime_checkable
class ModelBackend(Protocol):
    config: ModelConfig
    device: torch.device
    dtype: torch.dtype
    embed: EmbedBackend
    gpt: GPTBackend
    grouped_reads: bool  # False: attention reads every row up to the longest in one read (one group per step)

    def process_logits(
        self, logits: torch.Tensor, counts: torch.Tensor, steps: torch.Tensor, params: SamplingBatch, eos: int
    ) -> torch.Tensor:
        """Upstream's logits chain (`actors.engine.sampling.process_logits`); the draw itself is the engine's."""
        ...


class TorchBackend:
    """The torch model as a `ModelBackend`: its own modules, the engine's logits chain, grouped reads."""

    grouped_reads = True

    def __init__(self, model: ChatTTSModel) -> None:
        self.model = model
        self.config = model.config
        self.device = model.device
        self.dtype = model.dtype
        self.embed = model.embed
        self.gpt = model.gpt

    def process_logits(
        self, logits: torch.Tensor, counts: torch.Tensor, steps: torch.Tensor, params: SamplingBatch, eos: int
    ) -> torch.Tensor:
        return process_logits(logits, counts, steps, params, eos)


def as_backend(model: ChatTTSModel | ModelBackend) -> ModelBackend:
    """The engine's view of `model`: a backend as it is, the torch model through `TorchBackend`."""
    if isinstance(model, ChatTTSModel):
        return TorchBackend(model)
    if not isinstance(model, ModelBackend):
        raise TypeError(
            f"{type(model).__name__} is not a ModelBackend (actors.engine.backend): it lacks what the engine calls"
        )
    return model
