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

from snugfit.errors import SnugfitError

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


# -- SGDR: cosine annealing with warm restarts ---------------------------------
def _check_count(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SnugfitError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return value


def sgdr_cycle_lengths(n_cycles: int, cycle_len: int, cycle_mult: int) -> list[int]:
    """Epochs in each cycle: ``cycle_len * cycle_mult**k`` for cycle ``k``.

    >>> sgdr_cycle_lengths(3, 1, 2)
    [1, 2, 4]
    """
    _check_count("n_cycles", n_cycles)
    _check_count("cycle_len", cycle_len)
    _check_count("cycle_mult", cycle_mult)
    return [cycle_len * cycle_mult**k for k in range(n_cycles)]


def sgdr_epochs(n_cycles: int, cycle_len: int, cycle_mult: int) -> int:
    """Total epochs of SGDR: ``cycle_len * (1 + m + m**2 + ...)`` over ``n_cycles``.

    >>> sgdr_epochs(3, 1, 2)
    7
    """
    return sum(sgdr_cycle_lengths(n_cycles, cycle_len, cycle_mult))


def sgdr_cycle_ends(n_cycles: int, cycle_len: int, cycle_mult: int) -> list[int]:
    """The 0-based index of the last epoch of each cycle (what ``learn.epoch`` is in
    ``after_epoch`` when a cycle ends).

    >>> sgdr_cycle_ends(3, 1, 2)
    [0, 2, 6]
    """
    ends, total = [], 0
    for length in sgdr_cycle_lengths(n_cycles, cycle_len, cycle_mult):
        total += length
        ends.append(total - 1)
    return ends


def sgdr(
    pct: float,
    lr_max: float,
    n_cycles: int,
    cycle_len: int,
    cycle_mult: int = 2,
    warmup: float = 0.05,
    div: float = 100.0,
    div_final: float = 1e5,
) -> float:
    """SGD with warm restarts (Loshchilov & Hutter; fastai's ``fit_sgdr``).

    Training is ``n_cycles`` cycles; cycle ``k`` lasts ``cycle_len * cycle_mult**k``
    epochs. In each cycle the LR follows a cosine from ``lr_max`` down to
    ``lr_max / div_final`` (1e5: never exactly zero, as in `one_cycle`), then jumps
    back to ``lr_max`` when the next cycle starts. As in fastai 0.7, the first
    ``warmup`` fraction of the *first* cycle runs at a constant ``lr_max / div``
    (a constant warm-up: pretrained weights first meet the new head gently); the
    cosine then goes on from where it would be at that point, not from its top.

    Args:
        pct: the fraction of *all* training done, in [0, 1].
        lr_max: the LR at the start of each cycle.
        n_cycles, cycle_len, cycle_mult: the cycles, as in `sgdr_cycle_lengths`.
        warmup: fraction of the first cycle at ``lr_max / div`` (0: none).
        div: divisor of the warm-up LR.
        div_final: divisor of the LR at the end of each cycle.

    >>> sgdr(0.0, 1.0, 3, 1, 2)
    0.01
    >>> sgdr(1 / 7, 1.0, 3, 1, 2)  # epoch 1 of 7: the second cycle restarts
    1.0
    """
    lengths = sgdr_cycle_lengths(n_cycles, cycle_len, cycle_mult)
    if not 0.0 <= warmup < 1.0:
        raise SnugfitError(f"warmup: expected a fraction in [0, 1), got {warmup!r}")
    if not div > 0 or not div_final > 0:
        raise SnugfitError(f"div, div_final: expected positive numbers, got {div!r}, {div_final!r}")
    epoch = min(max(pct, 0.0), 1.0) * sum(lengths)
    # pct comes from integer step counts as a float: snap values within rounding of
    # an epoch boundary onto it, so the first batch of a cycle is really its first.
    if abs(epoch - round(epoch)) < 1e-9:
        epoch = float(round(epoch))
    start = 0
    for k, length in enumerate(lengths):
        if epoch < start + length or k == len(lengths) - 1:
            break
        start += length
    p = (epoch - start) / length
    if k == 0 and p < warmup:
        return lr_max / div
    return cos_anneal(lr_max, lr_max / div_final, p)
