"""The rows an engine runs: what a caller submits (`RowRequest`), what a preempted row keeps to resume (`Resume`),
and what the engine hands back while a row streams (`PartialRow`) and when it ends (`FinishedRow`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .prompt import CodePrompt
from .sampling import SamplingParams


@dataclass
class Resume:
    """What a preempted row had produced: restored on readmission, after its cache is recomputed."""

    codes: torch.Tensor  # [p, num_vq] int64 (a text row: its token ids, repeated in every column)
    hidden_out: torch.Tensor  # [p, H]
    recent: torch.Tensor  # [PENALTY_WINDOW, num_vq] the penalty window
    hidden: torch.Tensor  # [H] the hidden state the next step samples from

    @property
    def produced(self) -> int:
        return int(self.codes.shape[0])


@dataclass
class RowRequest:
    key: object  # caller's handle, returned with the result
    prompt: CodePrompt
    params: SamplingParams
    stream: bool = False  # report this row's progress (`ContinuousBatcher.progress`) while it runs
    text: bool = False  # a text row (refine-text stage: text head and embeddings) instead of a code row
    admitted_step: int = 0  # `stats.steps` when it entered a slot (for exact occupancy)
    admitted_order: int = 0  # admission counter: the latest admitted row is preempted first
    resume: Resume | None = None  # set while the row waits after a preemption
    base: int = 0  # frames it had produced when last admitted (0 unless resumed)

    @property
    def context(self) -> int:
        """Tokens its cache holds once (re)admitted: the prompt, plus what it produced before a preemption."""
        return self.prompt.length + (self.resume.produced if self.resume else 0)


@dataclass
class PartialRow:
    """A streaming row still generating: views of what it produced so far (consume before the next step)."""

    key: object
    codes: torch.Tensor  # [T, num_vq] int64 on the device
    hidden: torch.Tensor  # [T, H] model dtype on the device


@dataclass
class FinishedRow:
    key: object
    codes: torch.Tensor  # [T, num_vq] int64 on the device (a view into the slot's buffer: consume before refill);
    # a text row's token ids are its first column
    hidden: torch.Tensor  # [T, H] model dtype on the device (same)
    finished: bool  # ended by EOS
