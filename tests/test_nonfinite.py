"""Non-finite losses: the stop, its message, the restored weights, the checkpoints kept."""

import logging
import math

import pytest
import torch

from snugfit.callbacks import Callback, SaveCheckpoint
from snugfit.errors import NonFiniteLoss, SnugfitError
from snugfit.saving.checkpoint import read_checkpoint
from snugfit.train.nonfinite import StepInfo, nonfinite_message
from test_learner import fake_dls, make_learner, snapshot

NAN, INF = float("nan"), float("inf")


class PoisonLoss(Callback):
    """Multiply the loss by ``value`` (NaN or inf) at the given optimizer steps of the fit."""

    def __init__(self, steps, value=NAN):
        self.steps, self.value = set(steps), value

    def after_loss(self, learn):
        if learn.train_iter in self.steps:
            learn.loss_mb = learn.loss_mb * self.value  # the gradients become non-finite too


class Witness(Callback):
    """What the run looked like from the outside: weights after each epoch, the
    checkpoint file's bytes after each write, the batches that finished."""

    order = 95  # after SaveCheckpoint (90)

    def __init__(self, path=None):
        self.path, self.epoch_weights, self.files, self.batches = path, [], [], []

    def after_batch(self, learn):
        self.batches.append(learn.train_iter)
        if self.path is not None and self.path.exists():
            self.files.append(self.path.read_bytes())

    def after_epoch(self, learn):
        self.epoch_weights.append(snapshot(learn.model))


def assert_weights_equal(model, expected):
    now = snapshot(model)
    assert now.keys() == expected.keys()
    for k in now:
        assert torch.equal(now[k], expected[k]), k


def test_fp32_stops_at_the_first_nan_with_the_last_good_weights(tmp_path):
    ckpt = tmp_path / "ckpt.safetensors"
    learn = make_learner()  # 3 batches an epoch
    learn.unfreeze()
    witness = Witness(ckpt)
    cbs = [PoisonLoss([4]), SaveCheckpoint(ckpt, every_batches=1), witness]
    with pytest.raises(NonFiniteLoss) as e:
        learn.fit(3, lr=1e-2, cbs=cbs)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("loss is nan at fit 0, epoch 1, batch 1 (step 4), fp32: training stopped")
    assert "the weights from the end of epoch 0 are restored" in msg
    assert msg.endswith("lower the learning rate (now 1.0e-02)")
    assert math.isnan(e.value.value) and e.value.where.step == 4
    # the weights are those after epoch 0, exactly; the optimizer starts afresh
    assert_weights_equal(learn.model, witness.epoch_weights[0])
    assert len(witness.epoch_weights) == 1 and len(learn.recorder.rows) == 1
    assert not learn.opt.state and all(p.grad is None for p in learn.model.parameters())
    # the last checkpoint (after step 3) is untouched and loads with finite weights
    assert witness.batches == [0, 1, 2, 3]
    assert ckpt.read_bytes() == witness.files[-1]
    tensors, meta = read_checkpoint(ckpt)
    assert meta["position"] == {"fit_index": 0, "epoch": 1, "iter": 1}
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if k.startswith("model."))
    other = make_learner()
    other.load_checkpoint(ckpt)
    # training can go on from the restored weights at a lower rate
    learn.fit(1, lr=1e-3)
    assert all(math.isfinite(x) for x in learn.recorder.losses)


def test_bf16_stops_at_the_first_inf_and_restores_the_fit_start():
    learn = make_learner(precision="bf16")
    learn.unfreeze()
    start = snapshot(learn.model)
    with pytest.raises(NonFiniteLoss, match=r"^loss is inf at fit 0, epoch 0, batch 1 \(step 1\)"):
        learn.fit(2, lr=1e-3, cbs=[PoisonLoss([1], INF)])
    assert_weights_equal(learn.model, start)  # batch 0 had moved them
    with pytest.raises(NonFiniteLoss, match=r"from the start of the fit .* or train in fp32$"):
        learn.fit(1, lr=1e-3, cbs=[PoisonLoss([0], -INF)])


def test_fp16_skips_isolated_nonfinite_losses(caplog):
    learn = make_learner(precision="fp16", dls=fake_dls(n_batches=4))
    learn.unfreeze()
    start = snapshot(learn.model)
    with caplog.at_level(logging.WARNING, logger="snugfit"):
        learn.fit(2, lr=1e-3, cbs=[PoisonLoss([1, 2, 5], NAN), PoisonLoss([7], INF)])
    losses = learn.recorder.losses
    assert [i for i, x in enumerate(losses) if not math.isfinite(x)] == [1, 2, 5, 7]
    assert len(losses) == 8 and len(learn.recorder.rows) == 2
    skips = [r.getMessage() for r in caplog.records if "GradScaler skips" in r.getMessage()]
    assert len(skips) == 4 and "(2 in a row; training stops at 3)" in skips[1]
    final = snapshot(learn.model)
    assert all(torch.isfinite(v).all() for v in final.values())
    assert any(not torch.equal(start[k], final[k]) for k in start)  # it trained


def test_fp16_stops_after_three_nonfinite_losses_in_a_row():
    # steps 2, 3, 4 span the end of epoch 0: its weights are not kept (a run was
    # going on), so the copy from the start of the fit comes back
    learn = make_learner(precision="fp16")
    learn.unfreeze()
    start = snapshot(learn.model)
    with pytest.raises(NonFiniteLoss) as e:
        learn.fit(3, lr=1e-3, cbs=[PoisonLoss([2, 3]), PoisonLoss([4], INF)])
    msg = str(e.value)
    assert msg.startswith(
        "loss non-finite for 3 steps in a row, the last inf at fit 0, epoch 1, batch 1 (step 4), "
        "fp16: training stopped, the weights from the start of the fit are restored"
    )
    assert msg.endswith("or train in bf16 or fp32 (fp16 overflows above 65504)")
    assert_weights_equal(learn.model, start)
    # max_nonfinite=1 stops at the first, as in fp32
    learn = make_learner(precision="fp16", max_nonfinite=1)
    with pytest.raises(NonFiniteLoss, match="batch 2 "):
        learn.fit(1, lr=1e-3, cbs=[PoisonLoss([2])])


def test_finite_run_is_unchanged_by_the_checks():
    results = []
    for max_nonfinite in (3, None):
        learn = make_learner(max_nonfinite=max_nonfinite)
        learn.unfreeze()
        learn.fit(2, lr=1e-3)
        results.append(snapshot(learn.model))
    assert_weights_equal_dicts(*results)
    # with the checks off a NaN trains on, into NaN weights
    learn = make_learner(max_nonfinite=None)
    learn.unfreeze()
    learn.fit(1, lr=1e-3, cbs=[PoisonLoss([0])])
    assert not all(torch.isfinite(v).all() for v in snapshot(learn.model).values())
    with pytest.raises(SnugfitError, match="max_nonfinite: expected a positive integer"):
        make_learner(max_nonfinite=0)


def assert_weights_equal_dicts(a, b):
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_lagged_check_as_on_cuda_never_saves_a_bad_step(tmp_path):
    # On CUDA a loss is checked one step late. Simulated on the CPU: the NaN of
    # step 1 is seen when step 1's checkpoint is about to be written (the
    # checkpoint checks first), so that write never happens.
    ckpt = tmp_path / "ckpt.safetensors"
    learn = make_learner()
    learn.unfreeze()
    learn.nonfinite.lagged = True
    witness = Witness(ckpt)
    with pytest.raises(NonFiniteLoss, match=r"batch 1 \(step 1\)"):
        learn.fit(2, lr=1e-3, cbs=[PoisonLoss([1]), SaveCheckpoint(ckpt, every_batches=1), witness])
    assert witness.batches == [0] and ckpt.read_bytes() == witness.files[0]
    assert read_checkpoint(ckpt)[1]["position"]["iter"] == 1

    # without a checkpoint, the NaN of step 1 is seen after step 2 is queued
    learn = make_learner()
    learn.unfreeze()
    learn.nonfinite.lagged = True
    start, witness = snapshot(learn.model), Witness()
    with pytest.raises(NonFiniteLoss, match=r"batch 1 \(step 1\)"):
        learn.fit(2, lr=1e-3, cbs=[PoisonLoss([1]), witness])
    assert witness.batches == [0, 1]  # step 2 ran, its after_batch did not
    assert_weights_equal(learn.model, start)

    # the last batch of an epoch is checked when the epoch's batches end: no
    # epoch checkpoint, no epoch row
    learn = make_learner()
    learn.nonfinite.lagged = True
    with pytest.raises(NonFiniteLoss, match=r"epoch 0, batch 2 \(step 2\)"):
        learn.fit(2, lr=1e-3, cbs=[PoisonLoss([2]), SaveCheckpoint(ckpt.with_name("e"))])
    assert not ckpt.with_name("e").exists() and not learn.recorder.rows


def test_message_for_each_precision():
    at = StepInfo(fit=1, epoch=2, batch=3, step=9, precision="fp32", lr=3e-4)
    text = nonfinite_message(at, "loss is nan", "the end of epoch 1")
    assert text == (
        "loss is nan at fit 1, epoch 2, batch 3 (step 9), fp32: training stopped, the weights "
        "from the end of epoch 1 are restored; lower the learning rate (now 3.0e-04)"
    )
    fp16 = nonfinite_message(StepInfo(1, 2, 3, 9, "fp16", 3e-4), "x", "y")
    assert fp16.endswith("(now 3.0e-04) or train in bf16 or fp32 (fp16 overflows above 65504)")
    bf16 = nonfinite_message(StepInfo(1, 2, 3, 9, "bf16", 3e-4), "x", "y")
    assert bf16.endswith("(now 3.0e-04) or train in fp32")


def test_an_update_that_overflows_the_weights_stops_at_the_epoch_end(tmp_path):
    # every loss is finite, but the last step of epoch 1 writes inf into a weight:
    # the weight check at the epoch's end stops before its checkpoint is written
    class OverflowAt(Callback):
        def after_step(self, learn):
            if learn.train_iter == 5:
                with torch.no_grad():
                    learn.model.fc.weight[0, 0] = INF

    ckpt = tmp_path / "ckpt.safetensors"
    learn = make_learner()
    learn.unfreeze()
    witness = Witness(ckpt)
    with pytest.raises(NonFiniteLoss) as e:
        learn.fit(3, lr=1e-3, cbs=[OverflowAt(), SaveCheckpoint(ckpt), witness])
    assert str(e.value).startswith(
        "weights non-finite (fc.weight) after the update at fit 0, epoch 1, batch 2 (step 5), "
        "fp32: training stopped, the weights from the end of epoch 0 are restored"
    )
    assert_weights_equal(learn.model, witness.epoch_weights[0])
    assert len(witness.epoch_weights) == 1 and ckpt.read_bytes() == witness.files[-1]
    assert read_checkpoint(ckpt)[1]["position"] == {"fit_index": 0, "epoch": 1, "iter": 0}


def test_cli_prints_one_error_line_and_keeps_the_checkpoint(image_folder, tmp_path, capsys):
    from snugfit.app.cli import main

    out = tmp_path / "run"
    args = ["--arch", "test_efficientnet", "--no-pretrained", "--bs", "8", "--size", "32"]
    args += ["--workers", "0", "--recipe", "fine_tune", "--epochs", "1", "--freeze-epochs", "1"]
    # at 1e3 the head (fit 0) survives; the unfrozen body (fit 1) diverges at once
    args += ["--precision", "fp32", "--seed", "0", "--lr", "1e3", "--out", str(out)]
    code = main(["train", str(image_folder), *args])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("snugfit: error:")]
    assert code == 2 and len(errors) == 1, err
    assert errors[0].startswith("snugfit: error: loss is nan at fit 1, epoch 0, batch ")
    assert "fp32: training stopped, the weights from the start of the fit are restored" in err
    assert "; lower the learning rate (now " in errors[0]
    # the checkpoint of the frozen phase is kept and holds finite weights
    tensors, meta = read_checkpoint(out / "checkpoint.safetensors")
    assert meta["position"] == {"fit_index": 1, "epoch": 0, "iter": 0}
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if k.startswith("model."))


def test_save_best_file_keeps_the_good_epoch(tmp_path):
    from snugfit.callbacks import SaveBest

    best = tmp_path / "best.safetensors"
    learn = make_learner()
    learn.unfreeze()
    witness = Witness(best)
    with pytest.raises(NonFiniteLoss):
        learn.fit(3, lr=1e-3, cbs=[PoisonLoss([4]), SaveBest("train_loss", path=best), witness])
    written = witness.files[-1]
    assert best.read_bytes() == written  # after_fit reloads it; nothing wrote over it
    assert_weights_equal(learn.model, witness.epoch_weights[0])
