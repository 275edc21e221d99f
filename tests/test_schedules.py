import itertools
import math

import pytest

from snugfit.errors import SnugfitError
from snugfit.train.schedules import (
    combine,
    cos_anneal,
    one_cycle,
    one_cycle_mom,
    sgdr,
    sgdr_cycle_ends,
    sgdr_epochs,
)


def test_cos_anneal_endpoints_and_middle():
    assert cos_anneal(1.0, 0.0, 0.0) == 1.0
    assert cos_anneal(1.0, 0.0, 1.0) == pytest.approx(0.0, abs=1e-12)
    assert cos_anneal(1.0, 0.0, 0.5) == pytest.approx(0.5)


def test_one_cycle_endpoints_and_peak():
    lr_max, div, div_final = 1e-2, 25.0, 1e5
    assert one_cycle(0.0, lr_max, div, div_final, 0.25) == pytest.approx(lr_max / div)
    assert one_cycle(0.25, lr_max, div, div_final, 0.25) == pytest.approx(lr_max)
    assert one_cycle(1.0, lr_max, div, div_final, 0.25) == pytest.approx(lr_max / div_final)
    # half-way through the warm-up: cosine midpoint between start and peak
    mid = (lr_max / div + lr_max) / 2
    assert one_cycle(0.125, lr_max, div, div_final, 0.25) == pytest.approx(mid)
    values = [one_cycle(i / 100, lr_max) for i in range(101)]
    assert max(values) == pytest.approx(lr_max)
    assert values.index(max(values)) == 25


def test_one_cycle_momentum_is_inverse():
    assert one_cycle_mom(0.0) == pytest.approx(0.95)
    assert one_cycle_mom(0.25) == pytest.approx(0.85)
    assert one_cycle_mom(1.0) == pytest.approx(0.95)


def test_combine_gives_each_part_local_progress():
    sched = combine([0.5, 0.5], [lambda p: p, lambda p: 10 + p])
    assert sched(0.25) == pytest.approx(0.5)
    assert sched(0.75) == pytest.approx(10.5)
    assert sched(1.0) == pytest.approx(11.0)
    with pytest.raises(ValueError, match="sum to 1"):
        combine([0.5, 0.6], [lambda p: p, lambda p: p])


def test_schedule_is_pure():
    # same progress, same value, in any call order (no hidden counter)
    a = [one_cycle(p, 1e-3) for p in (0.9, 0.1, 0.5)]
    b = [one_cycle(p, 1e-3) for p in (0.9, 0.1, 0.5)]
    assert a == b and not any(math.isnan(x) for x in a)


# -- SGDR ------------------------------------------------------------------------
def test_sgdr_epochs_and_cycle_ends():
    assert sgdr_epochs(3, 1, 2) == 7
    assert sgdr_epochs(2, 3, 1) == 6
    assert sgdr_epochs(4, 2, 3) == 2 * (1 + 3 + 9 + 27)
    assert sgdr_cycle_ends(3, 1, 2) == [0, 2, 6]
    assert sgdr_cycle_ends(2, 3, 1) == [2, 5]


def test_sgdr_restarts_at_cycle_starts():
    # cycles of 1, 2 and 4 epochs: 7 epochs, restarts at the start of epochs 1 and 3
    lr_max, total = 1e-2, 7
    lr = lambda epoch: sgdr(epoch / total, lr_max, 3, 1, 2)  # noqa: E731
    for start in (1, 3):
        assert lr(start) == pytest.approx(lr_max)
        assert lr(start - 1e-4) < lr_max * 1e-3  # just before: near the minimum
    assert lr(7) == pytest.approx(lr_max / 1e5)  # the floor at the very end
    assert lr(3 + 2) == pytest.approx(lr_max / 2, rel=1e-3)  # half-way through cycle 2
    # monotone decreasing within a cycle after the warm-up
    inside = [lr(3 + 4 * i / 50) for i in range(51)]
    assert all(a > b for a, b in itertools.pairwise(inside))


def test_sgdr_restart_is_exact_at_batch_boundaries():
    # pct comes from integer steps: the first batch of a cycle must be at lr_max
    n_iter, total = 7, 7
    for start in (1, 3):
        pct = start * n_iter / (total * n_iter)
        assert sgdr(pct, 1.0, 3, 1, 2) == 1.0


def test_sgdr_warmup_is_constant_in_the_first_cycle_only():
    lr_max = 1e-2
    # first cycle is 1 epoch of 7: warm-up covers 5% of it
    assert sgdr(0.0, lr_max, 3, 1, 2) == pytest.approx(lr_max / 100)
    assert sgdr(0.04 / 7, lr_max, 3, 1, 2) == pytest.approx(lr_max / 100)
    after = sgdr(0.06 / 7, lr_max, 3, 1, 2)
    assert after == pytest.approx(cos_anneal(lr_max, lr_max / 1e5, 0.06))
    assert sgdr(0.0, lr_max, 3, 1, 2, warmup=0.0) == pytest.approx(lr_max)
    assert sgdr(0.0, lr_max, 3, 1, 2, div=10) == pytest.approx(lr_max / 10)
    # second cycle: no warm-up
    assert sgdr(1 / 7, lr_max, 3, 1, 2) == pytest.approx(lr_max)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n_cycles": 0}, "n_cycles"),
        ({"cycle_mult": 0}, "cycle_mult"),
        ({"cycle_len": 0}, "cycle_len"),
        ({"cycle_mult": 1.5}, "cycle_mult"),
        ({"warmup": 1.0}, "warmup"),
    ],
)
def test_sgdr_bad_arguments(kwargs, name):
    args = {"n_cycles": 3, "cycle_len": 1, "cycle_mult": 2, **kwargs}
    with pytest.raises(SnugfitError, match=name):
        sgdr(0.5, 1e-3, **args)
    if "warmup" not in kwargs:
        with pytest.raises(SnugfitError, match=name):
            sgdr_epochs(**args)
