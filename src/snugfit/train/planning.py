"""The memory plan of a Learner: when to plan, for what, and applying the choice.

`snugfit.memory` measures a model and ranks the configurations that fit a
budget; this module is the glue between it and a `Learner`. It owns the budget
(``memory_budget``, else the whole card), the precisions a plan may choose from
(the learner's request), the per-rank batch under torchrun, applying the chosen
micro-batch, precision and checkpointing, and re-planning when a phase changes
what moves memory: the frozen groups, the image size and the batch size.
"""

from __future__ import annotations

import math

import torch

from snugfit import distributed
from snugfit.errors import SnugfitError
from snugfit.memory.precision import half_precision


def plan(learn, budget, bs: int | None, size: int | None, apply: bool, device_type: str | None):
    """`Learner.plan` (its defaults): plan ``learn``'s memory settings, print the table,
    apply the choice."""
    from snugfit.memory import make_plan, parse_bytes

    budget = learn.memory_budget if budget is None else budget
    device_type = device_type or learn.device.type
    on_cuda = learn.device.type == "cuda"
    total = torch.cuda.get_device_properties(learn.device).total_memory if on_cuda else None
    if budget is None:
        if total is None:
            raise SnugfitError("plan: give a budget, e.g. learn.plan('8GB')")
        budget = total
    budget = parse_bytes(budget, total=total)
    if learn.precision_request == "auto":
        half = half_precision(learn.device) if device_type == learn.device.type else "bf16"
        precisions = ("fp32", half)
    else:
        precisions = (learn.precision,)
    bs = bs or learn.dls.bs
    if learn.distributed:  # each GPU holds its shard of the global batch
        bs = math.ceil(bs / distributed.world_size())
    p = make_plan(
        learn.model,
        bs=bs,
        size=size or learn.dls.size,
        budget=budget,
        device_type=device_type,
        opt=learn.opt_name,
        precisions=precisions,
        channels_last=learn.channels_last,
        probe_device=learn.device,
    )
    p.frozen_to = learn.frozen_to
    learn.console.print(p.table())
    learn.console.print(p.summary(), highlight=False)
    if apply and p.chosen is not None:
        c = p.chosen
        learn._set_precision(c.precision)
        learn.micro_bs = c.micro_bs
        learn.set_checkpointing(c.checkpointing)
    learn.memory_plan = p
    learn.events.emit("plan", **p.to_dict(), applied=apply)
    if learn.dls is not None:
        learn._plan_key = phase_key(learn)
    return p


def phase_key(learn) -> tuple:
    """What moves memory: the frozen groups, the image size and the batch size."""
    return (learn.frozen_to, learn.dls.size, learn.dls.bs)


def maybe_replan(learn) -> None:
    """Plan again when the phase changed since the last plan (with a budget, or on CUDA)."""
    wants_plan = learn.memory_budget is not None or learn.device.type == "cuda"
    if wants_plan and phase_key(learn) != learn._plan_key:
        learn.plan()


def what_would_fit(learn) -> str:
    """Advice for an error that nothing fits: the plan's summary, or general hints."""
    if learn.memory_plan is not None:
        return learn.memory_plan.summary()
    return "try a smaller image size, a smaller model, or freeze more layers"
