"""Token embeddings and output heads of the ChatTTS GPT.

Text positions embed with `emb_text`; audio-code positions with the SUM of the `num_vq` code embeddings.
The checkpoint stores the heads weight-normed and per codebook; the loader folds weight norm and concatenates
the code heads into `head_code` so the decode step does one matmul for all codebooks.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import GPTConfig


class Embed(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.num_vq = config.num_vq
        self.num_audio_tokens = config.num_audio_tokens
        hidden = config.hidden_size
        self.emb_text = nn.Embedding(config.num_text_tokens, hidden)
        self.emb_code = nn.ModuleList([nn.Embedding(config.num_audio_tokens, hidden) for _ in range(config.num_vq)])
        self.head_text = nn.Linear(hidden, config.num_text_tokens, bias=False)
        self.head_code = nn.Linear(hidden, config.num_vq * config.num_audio_tokens, bias=False)

    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        return self.emb_text(ids)

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [..., num_vq] -> [..., hidden], the sum over codebooks in codebook order."""
        parts = [self.emb_code[i](codes[..., i]) for i in range(self.num_vq)]
        return torch.stack(parts, dim=-1).sum(-1)

    def text_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., H] -> logits [..., num_text_tokens] (the refine-text stage's head) in the head's dtype."""
        return self.head_text(hidden.to(self.head_text.weight.dtype))

    def code_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., H] -> logits [..., num_vq, num_audio_tokens] in the head's dtype (kept float32)."""
        logits = self.head_code(hidden.to(self.head_code.weight.dtype))
        return logits.view(*hidden.shape[:-1], self.num_vq, self.num_audio_tokens)
