"""Learning-rate and momentum schedules as pure functions of progress.

A schedule maps ``pct``, the fraction of training done in [0, 1], to a value.
No schedule keeps a counter: the loop passes the progress in, so resuming at
any step gives the same value as never having stopped.

>>> round(one_cycle(0.0, 1e-2), 6)
0.0004
>>> one_cycle(0.25, 1e-2)
0.01
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

Schedule = Callable[[float], float]


def cos_anneal(start: float, end: float, pct: float) -> float:
    """Cosine from ``start`` (pct 0) to ``end`` (pct 1)."""
    return end + (start - end) / 2 * (1 + math.cos(math.pi * pct))


def linear(start: float, end: float, pct: float) -> float:
    return start + (end - start) * pct


def combine(pcts: Sequence[float], scheds: Sequence[Schedule]) -> Schedule:
    """Join schedules, each over its share ``pcts[i]`` of training (shares sum to 1).

    Each part receives its own local progress in [0, 1].
    """
    if abs(sum(pcts) - 1) > 1e-9:
        raise ValueError(f"schedule shares must sum to 1, got {list(pcts)}")
    bounds = [sum(pcts[:i]) for i in range(len(pcts) + 1)]

    def sched(pct: float) -> float:
        pct = min(max(pct, 0.0), 1.0)
        for i, part in enumerate(scheds):
            lo, hi = bounds[i], bounds[i + 1]
            if pct < hi or i == len(scheds) - 1:
                return part((pct - lo) / (hi - lo) if hi > lo else 1.0)
        raise AssertionError("unreachable")

    return sched


def one_cycle(
    pct: float,
    lr_max: float,
    div: float = 25.0,
    div_final: float = 1e5,
    pct_start: float = 0.25,
) -> float:
    """fastai's one-cycle: cosine warm-up from ``lr_max/div`` to ``lr_max`` over
    ``pct_start``, then cosine annealing down to ``lr_max/div_final``."""
    return combine(
        [pct_start, 1 - pct_start],
        [
            lambda p: cos_anneal(lr_max / div, lr_max, p),
            lambda p: cos_anneal(lr_max, lr_max / div_final, p),
        ],
    )(pct)


def one_cycle_mom(pct: float, moms=(0.95, 0.85, 0.95), pct_start: float = 0.25) -> float:
    """Momentum cycled inversely to the learning rate during one-cycle."""
    return combine(
        [pct_start, 1 - pct_start],
        [
            lambda p: cos_anneal(moms[0], moms[1], p),
            lambda p: cos_anneal(moms[1], moms[2], p),
        ],
    )(pct)


def constant(value: float) -> Schedule:
    return lambda pct: value
