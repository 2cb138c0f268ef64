"""A row's GPT prompt: text token ids, an optional speaker vector and optional reference codes, and its embedding.

The engine takes token ids, never text: tokenisation and prompt decoration are `actors.text`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class CodePrompt:
    """One row's GPT input: text token ids, then optional reference codes [num_vq, P] (after [Ptts])."""

    token_ids: list[int]
    speaker: torch.Tensor | None = None  # L2-normalised float16 [H], placed at every [spk_emb] position
    reference_codes: torch.Tensor | None = None

    @property
    def length(self) -> int:
        extra = 0 if self.reference_codes is None else int(self.reference_codes.shape[1])
        return len(self.token_ids) + extra


def prompt_embeddings(model: Any, prompt: CodePrompt, spk_emb_id: int) -> torch.Tensor:
    """A prompt's input embeddings through `model` (a `ModelBackend` or the torch model): text, speaker, reference."""
    device = model.device
    ids = torch.tensor(prompt.token_ids, dtype=torch.int64, device=device)
    text = model.embed.embed_text(ids)
    if prompt.speaker is not None:
        speaker = prompt.speaker.to(device=device, dtype=text.dtype)
        text = torch.where((ids == spk_emb_id).unsqueeze(-1), speaker, text)
    if prompt.reference_codes is None or prompt.reference_codes.shape[1] == 0:
        return text
    codes = prompt.reference_codes.to(device=device, dtype=torch.int64).t()
    return torch.cat([text, model.embed.embed_codes(codes).to(text.dtype)], dim=0)
