"""Exact resume: a recipe stopped mid-epoch continues to the same final weights."""

import pytest
import timm
import torch

from snugfit import Learner
from snugfit.callbacks import Callback, SaveCheckpoint
from snugfit.errors import SnugfitError
from test_learner import fake_dls, quiet, snapshot


def learner(**kw):
    torch.manual_seed(0)
    # dropout in the head: the resumed run must also restore the random generators
    model = timm.create_model("test_resnet", num_classes=3, drop_rate=0.3)
    return Learner(fake_dls(n_batches=4), model, metrics=["accuracy"], precision="fp32",
                   console=quiet(), **kw)  # fmt: skip


class StopAt(Callback):
    def __init__(self, fit_index, epoch, batch):
        self.at = (fit_index, epoch, batch)

    def after_batch(self, learn):
        if (learn.fit_index, learn.epoch, learn.iter) == self.at:
            raise KeyboardInterrupt


@pytest.mark.parametrize("stop", [(0, 0, 2), (1, 1, 1), (1, 0, 3)], ids=["frozen", "mid", "end"])
def test_resume_gives_the_uninterrupted_weights(tmp_path, stop):
    ref = learner()
    ref.fine_tune(2, freeze_epochs=1)

    ckpt = tmp_path / "ckpt.safetensors"
    stopped = learner()
    with pytest.raises(KeyboardInterrupt):
        stopped.fine_tune(
            2, freeze_epochs=1, cbs=[SaveCheckpoint(ckpt, every_batches=1), StopAt(*stop)]
        )
    torch.manual_seed(123)  # the global RNG of the new process differs: resume restores it
    resumed = learner()
    resumed.fine_tune(2, freeze_epochs=1, resume=ckpt)

    a, b = snapshot(ref.model), snapshot(resumed.model)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    assert resumed.frozen_to == 0
    # the history continues as if never stopped
    assert len(resumed.recorder.rows) == len(ref.recorder.rows) == 3
    for r1, r2 in zip(ref.recorder.rows, resumed.recorder.rows, strict=True):
        assert r1["train_loss"] == pytest.approx(r2["train_loss"], abs=1e-6)
        assert r1["valid_loss"] == pytest.approx(r2["valid_loss"], abs=1e-6)
    flat = [x for lrs in ref.recorder.lrs for x in lrs]
    assert [x for lrs in resumed.recorder.lrs for x in lrs] == pytest.approx(flat)


def test_epoch_checkpoint_resumes_at_the_next_epoch(tmp_path):
    ref = learner()
    ref.fit_one_cycle(3, 1e-3)
    ckpt = tmp_path / "c.safetensors"
    stopped = learner()
    with pytest.raises(KeyboardInterrupt):
        stopped.fit_one_cycle(3, 1e-3, cbs=[SaveCheckpoint(ckpt), StopAt(0, 1, 2)])
    resumed = learner()
    resumed.fit_one_cycle(3, 1e-3, resume=ckpt)
    a, b = snapshot(ref.model), snapshot(resumed.model)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    # the finished epoch's losses are not counted again in the next one
    assert len(resumed.recorder.losses) == len(ref.recorder.losses) == 12
    for r1, r2 in zip(ref.recorder.rows, resumed.recorder.rows, strict=True):
        assert r1["train_loss"] == pytest.approx(r2["train_loss"], abs=1e-6)


def test_resume_needs_a_position(tmp_path):
    learn = learner()
    learn.save_checkpoint(tmp_path / "plain.safetensors")
    with pytest.raises(SnugfitError, match="no training position"):
        learner().fit(1, resume=tmp_path / "plain.safetensors")


@pytest.mark.parametrize("precompute", [False, True], ids=["images", "features"])
def test_resume_with_real_images_and_augmentation(image_folder, tmp_path, precompute):
    from snugfit import ImageDataLoaders, vision_learner

    def colour():
        torch.manual_seed(0)
        dls = ImageDataLoaders.from_folder(image_folder, bs=4, size=32, num_workers=0, seed=3)
        learn = vision_learner(dls, "test_efficientnet", pretrained=False, precision="fp32",
                               console=quiet(), precompute=precompute)  # fmt: skip
        if precompute:
            learn.freeze()
        return learn

    ref = colour()
    ref.fit_one_cycle(3, 1e-3)
    ckpt = tmp_path / "c.safetensors"
    stopped = colour()
    with pytest.raises(KeyboardInterrupt):
        stopped.fit_one_cycle(3, 1e-3, cbs=[SaveCheckpoint(ckpt, every_batches=1), StopAt(0, 1, 2)])
    resumed = colour()
    resumed.fit_one_cycle(3, 1e-3, resume=ckpt)
    a, b = snapshot(ref.model), snapshot(resumed.model)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
