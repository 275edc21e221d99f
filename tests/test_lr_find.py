import math
import signal

import pytest
import torch

from snugfit.callbacks import Callback
from snugfit.errors import SnugfitError
from snugfit.train.lr_find import (
    LRFindResult,
    lr_find,
    smooth,
    suggest_minimum,
    suggest_steep,
    suggest_valley,
    suggestions,
)
from test_learner import fake_dls, make_learner, snapshot


def _opt_state(opt):
    sd = opt.state_dict()
    return sd["state"], sd["param_groups"]


def _assert_same_opt(a, b):
    (state_a, groups_a), (state_b, groups_b) = a, b
    assert groups_a == groups_b
    assert state_a.keys() == state_b.keys()
    for i in state_a:
        assert state_a[i].keys() == state_b[i].keys()
        for k, v in state_a[i].items():
            assert torch.equal(v, state_b[i][k]), (i, k)


def _clone_opt(opt):
    state, groups = _opt_state(opt)
    state = {i: {k: v.clone() for k, v in s.items()} for i, s in state.items()}
    return state, [dict(g) for g in groups]


def test_lr_find_restores_the_learner_exactly():
    learn = make_learner(bn_freeze_below=0)
    learn.unfreeze()
    learn.fit(1, lr=1e-3)  # an optimizer with state, BN buffers that moved, a recorder
    learn.freeze()
    weights, opt = snapshot(learn.model), _clone_opt(learn.opt)
    rec = {k: list(getattr(learn.recorder, k)) for k in ("losses", "lrs", "moms", "rows")}
    grads = [p.requires_grad for p in learn.model.parameters()]
    rng = torch.get_rng_state()

    res = learn.lr_find(num_it=8)

    assert len(res.lrs) == len(res.losses) == 8
    after = snapshot(learn.model)
    assert weights.keys() == after.keys()
    for k in weights:
        assert torch.equal(weights[k], after[k]), k
    assert any("running_mean" in k for k in weights)  # BN buffers were compared
    _assert_same_opt(opt, _opt_state(learn.opt))
    for k, v in rec.items():
        assert getattr(learn.recorder, k) == v, k
    assert [p.requires_grad for p in learn.model.parameters()] == grads
    assert learn.frozen_to == len(learn.groups) - 1
    assert torch.equal(torch.get_rng_state(), rng)


def test_lr_find_sweeps_exponentially_over_epochs_of_the_loader():
    learn = make_learner()  # 3 batches per epoch: 10 steps cycle over 4 epochs
    res = lr_find(learn, start_lr=1e-6, end_lr=1e-2, num_it=10, stop_div=False)
    expected = [1e-6 * (1e4) ** (i / 10) for i in range(10)]
    assert res.lrs == pytest.approx(expected)
    assert set(res.suggestions) == {"valley", "minimum", "steep"}
    assert res.suggested == res.suggestions["valley"]
    assert all(math.isfinite(x) for x in res.losses)


def test_lr_find_keeps_the_loader_epoch():
    learn = make_learner()

    class Counting(list):
        epoch = 5

        def __iter__(self):
            self.epoch += 1
            return super().__iter__()

    learn.dls.train = Counting(learn.dls.train)
    lr_find(learn, num_it=7)
    assert learn.dls.train.epoch == 5


@pytest.mark.parametrize("kw", [{"micro_bs": 3}, {"precision": "bf16"}, {"precision": "fp16"}])
def test_lr_find_with_micro_batches_and_mixed_precision(kw):
    learn = make_learner("test_vit", **kw)
    learn.fit(1, lr=1e-3)  # fp16: a GradScaler that has counted steps
    weights = snapshot(learn.model)
    scaler = learn.scaler.state_dict() if learn.scaler else None
    res = learn.lr_find(num_it=6, suggest="steep")
    assert len(res.losses) == 6 and res.suggested == res.suggestions["steep"]
    for k, v in snapshot(learn.model).items():
        assert torch.equal(weights[k], v), k
    assert (learn.scaler.state_dict() if learn.scaler else None) == scaler


@pytest.fixture
def flush_denormals():
    # On the way to blowing up, values pass through denormal floats, which CPUs
    # compute ~100x slower: flushed, this test takes a second instead of a minute.
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)  # torch's default


def test_lr_find_stops_when_the_loss_diverges(flush_denormals):
    learn = make_learner(dls=fake_dls(n_batches=4))
    learn.unfreeze()
    res = learn.lr_find(start_lr=1e-4, end_lr=1e3, num_it=100)
    assert 5 < len(res.losses) < 100
    assert res.suggestions["minimum"] < 1e3


def test_lr_find_bad_arguments():
    learn = make_learner()
    for kw, name in [
        ({"suggest": "slide"}, "suggest"),
        ({"num_it": 1}, "num_it"),
        ({"start_lr": 1.0, "end_lr": 0.1}, "start_lr"),
    ]:
        with pytest.raises(SnugfitError, match=name):
            learn.lr_find(**kw)


def test_smooth_is_debiased():
    assert smooth([2.0]) == pytest.approx([2.0])
    s = smooth([1.0, 3.0])
    assert s[1] == pytest.approx((0.98 * 0.02 * 1 + 0.02 * 3) / (1 - 0.98**2))


def _synthetic_curve():
    # 0.1 decade per point from 1e-7 to 10; flat at 2 up to 1e-4, a cosine descent
    # to 0.5 at 1e-1 (steepest at 10**-2.5), then a blow-up
    xs = [-7 + i / 10 for i in range(81)]
    losses = []
    for x in xs:
        if x <= -4:
            losses.append(2.0)
        elif x <= -1:
            losses.append(1.25 + 0.75 * math.cos(math.pi * (x + 4) / 3))
        else:
            losses.append(0.5 + 3 * (x + 1))
    return [10**x for x in xs], losses


def test_suggestions_on_a_synthetic_curve():
    lrs, losses = _synthetic_curve()
    assert suggest_minimum(lrs, losses) == pytest.approx(1e-2)
    # the valley runs from the plateau's end (1e-4) to the bottom (1e-1): 2/3 of it
    assert suggest_valley(lrs, losses) == pytest.approx(1e-2)
    assert suggest_steep(lrs, losses) == pytest.approx(10**-2.5, rel=0.3)
    # the sweep's trimming (first num_it//10, last 5) does not move them here
    assert suggestions(lrs, losses, num_it=81) == pytest.approx(
        {"valley": 1e-2, "minimum": 1e-2, "steep": suggest_steep(lrs, losses)}
    )


def test_valley_tolerates_noise():
    lrs, losses = _synthetic_curve()
    bumpy = [v + (0.02 if i % 7 == 3 else 0.0) for i, v in enumerate(losses)]
    # the bumps lengthen the valley a little into the plateau, not to its start
    assert 10**-2.5 < suggest_valley(lrs, bumpy) < 10**-1.5


def test_too_short_a_sweep_says_so():
    with pytest.raises(SnugfitError, match="start_lr"):
        suggestions([1e-3], [1.0], num_it=100)


def test_plot_writes_a_png(tmp_path):
    lrs, losses = _synthetic_curve()
    res = LRFindResult(lrs, losses, suggestions(lrs, losses, 81))
    path = res.plot(tmp_path / "plots" / "lr.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class _CtrlCInTheSweep(Callback):
    """Ctrl-C after the sweep's third step, before any fit; counts what runs after it."""

    def __init__(self):
        self.steps = self.steps_after = self.fits = 0

    def before_fit(self, learn):
        self.fits += 1

    def after_step(self, learn):
        self.steps += 1
        if self.steps == 3 and not self.fits:
            signal.raise_signal(signal.SIGINT)
        elif self.steps > 3:
            self.steps_after += 1


def test_ctrl_c_during_auto_fits_lr_find_stops_the_run_after_that_step(image_folder):
    from test_recipe import colour_learner

    learn = colour_learner(image_folder)
    ctrl_c = _CtrlCInTheSweep()
    learn.cbs.append(ctrl_c)
    before = snapshot(learn.model)
    with pytest.raises(KeyboardInterrupt):
        learn.auto_fit(1, head_epochs=1)
    assert (ctrl_c.steps, ctrl_c.steps_after, ctrl_c.fits) == (3, 0, 0)
    after = snapshot(learn.model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # the sweep was undone
    assert learn.events.of("interrupt")[-1]["during"] == "lr_find"
    assert learn.events.of("interrupt")[-1]["step"] == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler put back
