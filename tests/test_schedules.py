import math

import pytest

from snugfit.schedules import combine, cos_anneal, one_cycle, one_cycle_mom


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
