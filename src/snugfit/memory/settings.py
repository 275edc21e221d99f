"""The memory settings of a training run, as one frozen value.

What decides a step's memory besides the model and the batch: the micro-batch (or
the number of micro-batches per batch), activation checkpointing, the precision,
and the chunk size of evaluation passes. A `Learner` holds one `MemorySettings`
and changes it only through ``Learner.set_memory(why, ...)``, which records why
(the plan, an out-of-memory fallback, auto precision, a resumed checkpoint, the
user). Everything else reads it.

>>> s = MemorySettings(accumulate=3)
>>> s.micro(8), s.replace(micro_bs=2).micro(8)
(3, 2)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from snugfit.errors import check_optional_count
from snugfit.memory.precision import check_precision


@dataclass(frozen=True)
class MemorySettings:
    """Micro-batch, checkpointing, precision (and evaluation chunks) of a learner.

    Attributes:
        micro_bs: Samples per forward/backward; None: the whole batch (or ``accumulate``).
        checkpointing: Activation checkpointing on.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (never ``"auto"``: that is
            resolved before it gets here).
        accumulate: Micro-batches per batch, when ``micro_bs`` is None.
        eval_bs: Largest chunk an evaluation forward runs at once; None: the whole batch.
    """

    micro_bs: int | None = None
    checkpointing: bool = False
    precision: str = "fp32"
    accumulate: int | None = None
    eval_bs: int | None = None

    def __post_init__(self):
        check_optional_count("micro_bs", self.micro_bs)
        check_optional_count("accumulate", self.accumulate)
        check_optional_count("eval_bs", self.eval_bs)
        check_precision(self.precision, allow_auto=False)

    def micro(self, n: int) -> int:
        """The micro-batch size for a batch of ``n`` samples."""
        if self.micro_bs:
            return min(self.micro_bs, n)
        if self.accumulate:
            return math.ceil(n / self.accumulate)
        return n

    def replace(self, **changes) -> MemorySettings:
        """A copy with some settings changed (and checked)."""
        return dataclasses.replace(self, **changes)

    def levers(self) -> dict:
        """What out-of-memory recovery moves: micro-batch, checkpointing, precision."""
        return {
            "micro_bs": self.micro_bs,
            "checkpointing": self.checkpointing,
            "precision": self.precision,
        }

    def describe(self) -> str:
        """``"micro-batch 4, bf16, checkpointing"``."""
        ckpt = ", checkpointing" if self.checkpointing else ""
        return f"micro-batch {self.micro_bs}, {self.precision}{ckpt}"
