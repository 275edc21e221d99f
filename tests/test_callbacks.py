import logging
import operator

import pytest
import torch
from safetensors.torch import load_file

from snugfit.callbacks import Callback, CycleSnapshots, EarlyStopping, SaveBest
from snugfit.callbacks.early_stopping import Monitor, lower_is_better
from snugfit.errors import SnugfitError
from test_learner import make_learner, snapshot


class Script(Callback):
    """Overwrite the monitored value of each epoch's row with a scripted one."""

    order = 55  # after the Recorder appends the row, before the trackers read it

    def __init__(self, name, values):
        self.name, self.values = name, values

    def after_epoch(self, learn):
        learn.recorder.rows[-1][self.name] = self.values[learn.epoch]


class Snapshots(Callback):
    """The weights at the end of each epoch."""

    order = 80

    def __init__(self):
        self.weights = []

    def after_epoch(self, learn):
        self.weights.append(snapshot(learn.model))


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- SGDR snapshots -----------------------------------------------------------
def test_fit_sgdr_saves_one_snapshot_per_cycle(tmp_path):
    learn = make_learner()
    learn.fit_sgdr(3, 1, lr_max=1e-2, cycle_mult=2, snapshot_dir=tmp_path / "snaps")
    files = sorted((tmp_path / "snaps").iterdir())
    assert [f.name for f in files] == [f"cycle_{k}.safetensors" for k in range(3)]
    cycles = [load_file(str(f)) for f in files]
    assert not _same(cycles[0], cycles[1]) and not _same(cycles[1], cycles[2])
    assert _same(cycles[2], snapshot(learn.model))  # the last cycle ends the fit
    # the schedule the loop used restarts at lr_max at the first batch of epochs 1 and 3
    n = len(learn.dls.train)
    head = [lr[-1] for lr in learn.recorder.lrs]
    assert len(head) == 7 * n and head[0] == pytest.approx(1e-2 / 100)
    for epoch in (1, 3):
        assert head[epoch * n] == pytest.approx(1e-2)
        assert head[epoch * n - 1] < head[epoch * n] / 3  # the cycle before ended low


def test_cycle_snapshots_saves_at_cycle_ends_only(tmp_path):
    learn = make_learner()
    cb = CycleSnapshots(tmp_path, n_cycles=2, cycle_len=2, cycle_mult=1)
    learn.fit(4, lr=1e-3, cbs=[cb])
    assert [p.name for p in cb.paths] == ["cycle_0.safetensors", "cycle_1.safetensors"]
    with pytest.raises(SnugfitError, match="cycle_mult"):
        CycleSnapshots(tmp_path, 2, 1, cycle_mult=0)


# -- early stopping -----------------------------------------------------------
def test_early_stopping_stops_after_patience_epochs(caplog):
    learn = make_learner()
    values = [1.0, 0.9, 0.95, 0.96, 0.5, 0.4]
    with caplog.at_level(logging.INFO, logger="snugfit"):
        learn.fit(6, lr=1e-3, cbs=[Script("valid_loss", values), EarlyStopping(patience=2)])
    assert [r["epoch"] for r in learn.recorder.rows] == [0, 1, 2, 3]
    lines = [r.message for r in caplog.records if "early stopping" in r.message]
    assert len(lines) == 1 and "after epoch 3" in lines[0] and "(epoch 1)" in lines[0]


def test_early_stopping_higher_is_better_and_min_delta():
    learn = make_learner()
    # accuracy: higher is better; 0.55 and 0.58 are not better than 0.5 by more than 0.1
    values = [0.5, 0.55, 0.58, 0.9, 0.95]
    cbs = [Script("accuracy", values), EarlyStopping("accuracy", min_delta=0.1, patience=2)]
    learn.fit(5, lr=1e-3, cbs=cbs)
    assert len(learn.recorder.rows) == 3


def test_early_stopping_custom_comp_and_each_fit_starts_afresh():
    learn = make_learner()
    es = EarlyStopping("valid_loss", patience=1, comp=operator.gt)  # "bigger loss is better"
    learn.fit(3, lr=1e-3, cbs=[Script("valid_loss", [1.0, 2.0, 1.5]), es])
    assert len(learn.recorder.rows) == 3
    learn.fit(3, lr=1e-3, cbs=[Script("valid_loss", [0.1, 0.2, 0.3]), es])
    assert len(learn.recorder.rows) == 3 + 3


def test_monitor_direction_from_the_name():
    assert lower_is_better("valid_loss") and lower_is_better("error_rate")
    assert not lower_is_better("accuracy")
    assert Monitor("accuracy").comp(0.9, 0.8)
    with pytest.raises(SnugfitError, match="min_delta"):
        Monitor("valid_loss", min_delta=-1)
    with pytest.raises(SnugfitError, match="patience"):
        EarlyStopping(patience=0)


@pytest.mark.parametrize("cls", [EarlyStopping, SaveBest])
def test_unknown_monitor_names_it_and_the_choices(cls):
    learn = make_learner()
    before = snapshot(learn.model)
    with pytest.raises(SnugfitError, match=r"'valid_acc'.*valid_loss.*accuracy.*error_rate"):
        learn.fit(1, lr=1e-2, cbs=[cls("valid_acc")])
    assert _same(before, snapshot(learn.model))  # caught before any training


# -- save best ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("monitor", "values", "best"),
    [
        ("valid_loss", [1.0, 0.5, 0.9, 0.8], 1),
        ("accuracy", [0.2, 0.6, 0.9, 0.7], 2),
        ("error_rate", [0.5, 0.3, 0.3, 0.4], 1),  # a tie is no improvement
    ],
)
@pytest.mark.parametrize("on_disk", [False, True])
def test_save_best_reloads_the_best_epoch(tmp_path, caplog, monitor, values, best, on_disk):
    learn = make_learner()
    snaps = Snapshots()
    path = tmp_path / "best.safetensors" if on_disk else None
    cbs = [Script(monitor, values), SaveBest(monitor, path=path), snaps]
    with caplog.at_level(logging.INFO, logger="snugfit"):
        learn.fit(4, lr=1e-2, cbs=cbs)
    assert not _same(snaps.weights[best], snaps.weights[-1])  # training moved on
    assert _same(snapshot(learn.model), snaps.weights[best])
    assert path is None or path.is_file()
    assert any(f"best epoch {best}" in r.message for r in caplog.records)


def test_save_best_with_early_stopping():
    learn = make_learner()
    snaps = Snapshots()
    values = [1.0, 0.8, 0.9, 0.95, 0.1]
    cbs = [Script("valid_loss", values), SaveBest(), EarlyStopping(patience=2), snaps]
    learn.fit(5, lr=1e-2, cbs=cbs)
    assert len(snaps.weights) == 4
    assert _same(snapshot(learn.model), snaps.weights[1])
