"""A row's sampling parameters, for the code stage and the refine-text stage (upstream's defaults for each): the one
place those numbers live. Torch-free, so configs and HTTP bodies take their defaults from here."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SamplingParams:
    """Code-stage sampling parameters of one row (upstream defaults)."""

    temperature: float | tuple[float, ...] = 0.3
    top_p: float = 0.7
    top_k: int = 20
    repetition_penalty: float = 1.05
    min_new_tokens: int = 0
    max_new_tokens: int = 2048
    seed: int = 0

    def validate(self, num_vq: int) -> None:
        temps = self.temperature if isinstance(self.temperature, tuple) else (self.temperature,)
        if isinstance(self.temperature, tuple) and len(temps) != num_vq:
            raise ValueError(f"temperature needs 1 or {num_vq} values (one per codebook), got {len(temps)}")
        if any(not (t > 0) or t != t for t in temps):
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"min_new_tokens must be in [0, max_new_tokens], got {self.min_new_tokens}")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be in [0, 2**63), got {self.seed}")

    def temperatures(self, num_vq: int) -> tuple[float, ...]:
        if isinstance(self.temperature, tuple):
            return self.temperature
        return (float(self.temperature),) * num_vq


# Upstream's `RefineTextParams` defaults: the refine-text stage samples the text head with these (no repetition
# penalty: upstream applies none at 1.0), up to 384 new tokens, until [Ebreak].
REFINE_PARAMS = SamplingParams(
    temperature=0.7, top_p=0.7, top_k=20, repetition_penalty=1.0, min_new_tokens=0, max_new_tokens=384
)
