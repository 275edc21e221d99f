"""Optimizers over layer groups, discriminative learning rates, decoupled weight decay.

Each layer group (stem, stages, head) becomes two torch parameter groups: one
with weight decay and one without (norm-layer weights and biases), so that
learning rates can be set per layer group and decay never shrinks a norm layer.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

from snugfit.errors import SnugfitError

OPTIMIZERS = ("adamw", "sgd", "rmsprop")


def _lr_number(x) -> float:
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise SnugfitError(
            f"lr: expected a positive number, a slice(lo, hi) or one number per layer group, "
            f"got {x!r}"
        )
    return float(x)


def resolve_lrs(lr: float | slice | Sequence[float], n_groups: int) -> list[float]:
    """One learning rate per layer group, with fastai's meaning.

    - a float: the same rate for every group;
    - ``slice(hi)``: ``hi / 10`` for every group but the last, ``hi`` for the head;
    - ``slice(lo, hi)``: spread geometrically from ``lo`` (first group) to ``hi``;
    - a list: one rate per group.

    >>> resolve_lrs(slice(1e-4, 1e-2), 3)
    [0.0001, 0.001, 0.01]
    """
    if isinstance(lr, slice):
        lo, hi = lr.start, lr.stop
        if hi is None or (lo is not None and lo <= 0) or hi <= 0:
            raise SnugfitError(f"lr: slice bounds must be positive numbers, got {lr}")
        if lo is None:
            return [hi / 10] * (n_groups - 1) + [hi]
        if n_groups == 1:
            return [hi]
        step = math.log(hi / lo) / (n_groups - 1)
        return [float(f"{lo * math.exp(step * i):.12g}") for i in range(n_groups)]
    if isinstance(lr, (list, tuple)):
        if len(lr) != n_groups:
            raise SnugfitError(
                f"lr: got {len(lr)} learning rates for {n_groups} layer groups; "
                "give one per group, a float, or a slice(lo, hi)"
            )
        lrs = [_lr_number(x) for x in lr]
    else:
        lrs = [_lr_number(lr)] * n_groups
    if any(not math.isfinite(x) or x <= 0 for x in lrs):
        raise SnugfitError(f"lr: learning rates must be positive numbers, got {lr}")
    return lrs


def param_groups(
    layer_groups: Sequence[Sequence[tuple[str, torch.nn.Parameter]]],
    no_decay: set[str],
    wd: float,
) -> list[dict]:
    """Torch parameter groups, two per layer group; each carries its ``layer`` index."""
    if isinstance(wd, bool) or not isinstance(wd, numbers.Real) or not 0 <= wd < math.inf:
        raise SnugfitError(f"wd: weight decay must be a number >= 0, got {wd!r}")
    groups = []
    for i, named in enumerate(layer_groups):
        decay = [p for n, p in named if n not in no_decay]
        plain = [p for n, p in named if n in no_decay]
        for params, group_wd in ((decay, wd), (plain, 0.0)):
            if params:
                groups.append({"params": params, "weight_decay": group_wd, "layer": i})
    return groups


def make_optimizer(name: str, groups: list[dict], lr: float = 1e-3) -> torch.optim.Optimizer:
    """AdamW (fastai's betas and eps), SGD with momentum, or RMSprop.

    Weight decay is decoupled for all three: AdamW does it itself; for SGD and
    RMSprop the loop applies ``p -= lr * wd * p`` before each step (see
    `decoupled_weight_decay`), so ``weight_decay`` is kept out of torch's L2 term.
    """
    name = name.lower()
    if name not in OPTIMIZERS:
        raise SnugfitError(
            f"opt: unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}"
        )
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.99), eps=1e-5)
    plain = [{**g, "decoupled_wd": g.get("weight_decay", 0.0), "weight_decay": 0.0} for g in groups]
    if name == "sgd":
        return torch.optim.SGD(plain, lr=lr, momentum=0.9)
    return torch.optim.RMSprop(plain, lr=lr, alpha=0.99, eps=1e-5, momentum=0.0)


@torch.no_grad()
def decoupled_weight_decay(opt: torch.optim.Optimizer) -> None:
    """Apply ``p *= 1 - lr * wd`` for groups that asked for decoupled decay."""
    for g in opt.param_groups:
        wd = g.get("decoupled_wd", 0.0)
        if wd:
            params = [p for p in g["params"] if p.grad is not None]
            if params:
                torch._foreach_mul_(params, 1 - g["lr"] * wd)


def set_hypers(opt: torch.optim.Optimizer, lrs: Sequence[float], mom: float | None) -> None:
    """Set each param group's LR from its layer group's rate, and the momentum."""
    for g in opt.param_groups:
        g["lr"] = lrs[g["layer"]]
        if mom is None:
            continue
        if "betas" in g:
            g["betas"] = (mom, g["betas"][1])
        elif "momentum" in g and (g["momentum"] or isinstance(opt, torch.optim.SGD)):
            g["momentum"] = mom


def grads_finite(opt: torch.optim.Optimizer) -> bool:
    """Are all gradients finite? Only asked when some group has decoupled weight decay."""
    grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
    if not grads or not any(g.get("decoupled_wd") for g in opt.param_groups):
        return True  # only decoupled decay needs to know (AdamW decays inside its step)
    return bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())
