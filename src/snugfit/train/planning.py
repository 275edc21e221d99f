"""The memory plan of a learner: when to plan, for what budget, and which plan holds.

`snugfit.memory.plan` measures a model and ranks the configurations that fit a
budget; a learner's `Planner` owns the budget (``memory_budget``, else the whole
card), the last plan, and the phase it was made for: the frozen groups, the image
size and the batch size (`phase_key`). A plan is made again when that phase
changes (with a budget, or on CUDA). The learner applies the plan's choice to its
memory settings (``Learner.plan``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from snugfit.errors import SnugfitError
from snugfit.memory import MemoryPlan, enforce_budget, make_plan, parse_bytes
from snugfit.memory.precision import half_precision


def phase_key(frozen_to: int, size, bs: int) -> tuple:
    """What moves memory: the frozen groups, the image size and the batch size."""
    return (frozen_to, size, bs)


class Planner:
    """A learner's memory budget and its last plan.

    Args:
        budget: device memory to plan for ("8GB", "8GiB", a fraction of the card...),
            enforced on CUDA (`snugfit.memory.enforce_budget`); None: on CUDA the
            whole card, on the CPU no plan.
        device: the training device.
    """

    def __init__(self, budget, device: torch.device):
        self.budget, self.device = budget, device
        self.plan: MemoryPlan | None = None
        self.key: tuple | None = None
        if budget is not None:
            enforce_budget(budget, device)

    @property
    def wanted(self) -> bool:
        """Whether training plans at all: with a budget, or on CUDA."""
        return self.budget is not None or self.device.type == "cuda"

    def stale(self, key: tuple) -> bool:
        """Whether the phase ``key`` needs a new plan."""
        return self.wanted and key != self.key

    def settled(self, key: tuple) -> None:
        """The memory settings now fit phase ``key`` (a plan, or a resumed checkpoint's)."""
        self.key = key

    def make(
        self,
        model: nn.Module,
        *,
        bs: int,
        size,
        precision_request: str,
        precision: str,
        opt: str,
        channels_last: bool,
        shards: int = 1,
        extra_per_sample: int = 0,
        budget=None,
        device_type: str | None = None,
    ) -> MemoryPlan:
        """Plan ``model`` as it is now (frozen or not) for a batch of ``bs`` at ``size``.

        ``precision_request`` "auto" lets the plan choose fp32 or the device's 16-bit
        type (bf16 for a what-if on another device type); otherwise ``precision``
        is kept. Under torchrun ``bs`` is the global batch, split into ``shards``
        (the ranks), and the plan is for one rank's shard. Does not remember the
        plan: see `settled`.
        """
        budget = self.budget if budget is None else budget
        device_type = device_type or self.device.type
        on_cuda = self.device.type == "cuda"
        total = torch.cuda.get_device_properties(self.device).total_memory if on_cuda else None
        if budget is None:
            if total is None:
                raise SnugfitError("plan: give a budget, e.g. learn.plan('8GB')")
            budget = total
        budget = parse_bytes(budget, total=total)
        if precision_request == "auto":
            half = half_precision(self.device) if device_type == self.device.type else "bf16"
            precisions = ("fp32", half)
        else:
            precisions = (precision,)
        bs = math.ceil(bs / shards)  # under torchrun each GPU holds its shard of the batch
        return make_plan(
            model,
            bs=bs,
            size=size,
            budget=budget,
            device_type=device_type,
            opt=opt,
            precisions=precisions,
            channels_last=channels_last,
            probe_device=self.device,
            extra_per_sample=extra_per_sample,
        )

    def advice(self) -> str:
        """What would fit, for an error that nothing does: the plan's summary, or hints."""
        if self.plan is not None:
            return self.plan.summary()
        return "try a smaller image size, a smaller model, or freeze more layers"
