"""The automated checklist on generated images."""

import io

import pytest
import torch
from rich.console import Console

from snugfit import ImageDataLoaders, vision_learner
from snugfit.errors import SnugfitError


def colour_learner(folder):
    torch.manual_seed(0)
    dls = ImageDataLoaders.from_folder(folder, bs=8, size=32, num_workers=0, seed=0)
    console = Console(file=io.StringIO(), width=200)
    learn = vision_learner(
        dls, "test_efficientnet", pretrained=False, metrics=["accuracy"], precision="fp32",
        console=console,
    )  # fmt: skip
    return learn


def test_auto_fit_runs_the_checklist_and_keeps_the_best_phase(image_folder):
    learn = colour_learner(image_folder)
    learn.auto_fit(1, head_epochs=3)
    out = learn.console.file.getvalue()
    for phase in ("head on precomputed features", "head with data augmentation", "unfrozen"):
        assert f"phase: {phase}" in out
    assert "lr_find valley" in out
    state = learn.recipe_state
    assert state["lr_head"] > 0 and state["best_phase"] in (
        "head",
        "head with augmentation",
        "unfrozen",
    )
    # the kept weights are those of the best phase: their validation loss is the lowest seen
    best = min(r["valid_loss"] for r in learn.recorder.rows)
    assert learn.validate()["valid_loss"] <= best + 1e-5
    assert learn.validate()["accuracy"] == 1.0


def test_unfreezing_is_skipped_when_nothing_improved(image_folder):
    from test_callbacks import Script

    learn = colour_learner(image_folder)
    worse = Script("valid_loss", [99.0] * 4)  # the head's epochs: no improvement
    learn.auto_fit(1, head_epochs=1, head_aug_epochs=1, lr_find=False, unfreeze=True,
                   solve_head=False, cbs=[worse])  # fmt: skip
    out = learn.console.file.getvalue()
    assert "phase: unfrozen skipped" in out and len(learn.recorder.rows) == 2
    assert learn.recipe_state["best_phase"] == "start"
    # said plainly (the colour classes are no ImageNet classes: a fresh head)
    assert "no training phase improved on the start: the model kept is the pretrained " in out
    assert "the head it started from" in out
    assert learn.events.of("kept")[-1]["phase"] == "start"
    assert learn.frozen_to == len(learn.groups) - 1  # never unfrozen
    with pytest.raises(SnugfitError, match="schedule"):
        learn.auto_fit(1, schedule="cosine")


def test_without_head_phases_the_body_trains_at_the_unfrozen_cap(image_folder):
    # nothing trained the head, so "the head did not improve" cannot stop the run
    learn = colour_learner(image_folder)
    learn.auto_fit(1, head_epochs=0, head_aug_epochs=0, unfreeze=True, max_unfrozen_lr=1e-3)
    assert [e["name"] for e in learn.events.of("phase")] == [
        "unfrozen, discriminative learning rates"
    ]
    assert [(e["lr"], e["why"]) for e in learn.events.of("lr")] == [(1e-3, "rule")]  # no sweep
    assert len(learn.recorder.rows) == 1 and learn.frozen_to == 0


def test_the_seed_fastai_calls_work(image_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    learn = colour_learner(image_folder)
    learn.freeze()
    learn.fine_tune(6, freeze_epochs=3)
    learn.fit_one_cycle(12, lr_max=slice(1e-6, 1e-4))
    assert learn.recorder.lrs[-1][0] < learn.recorder.lrs[-1][-1]  # discriminative
    result = learn.lr_find()
    assert result.suggested > 0
    learn.recorder.plot_loss()
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert learn.to_fp16() is learn and learn.precision == "fp16"
    learn.fit_sgdr(3, 1, cycle_mult=2)
    assert len(learn.recorder.rows) == 3 + 6 + 12 + 7


class SpoilLastHeadEpoch:
    """Makes the head answer the first class for everything, with confidence, just
    before the validation of the first fit's last epoch: that epoch validates far
    worse than the one before it."""

    order = 0

    def __init__(self):
        self.fits = 0

    def __getattr__(self, name):
        return lambda learn: None

    def before_fit(self, learn):
        self.fits += 1

    def before_validate(self, learn):
        if self.fits == 1 and learn.epoch == learn.n_epoch - 1:
            head = learn.model.get_classifier()
            with torch.no_grad():
                head.weight.zero_()
                head.bias.copy_(torch.tensor([20.0, -20.0]))


def test_auto_fit_keeps_the_best_epoch_not_the_last_of_a_phase(image_folder):
    learn = colour_learner(image_folder)
    learn.auto_fit(0, head_epochs=3, head_aug_epochs=0, lr_find=False, solve_head=False,
                   cbs=[SpoilLastHeadEpoch()])  # fmt: skip
    rows = learn.recorder.rows
    assert len(rows) == 3 and rows[2]["valid_loss"] > rows[1]["valid_loss"]
    best = min(range(3), key=lambda i: rows[i]["valid_loss"])
    assert best < 2
    assert learn.events.of("kept")[-1]["epoch"] == best
    # the weights loaded are that epoch's: the same validation loss again
    assert learn.validate()["valid_loss"] == pytest.approx(rows[best]["valid_loss"], abs=1e-5)
    assert f"kept the weights after phase 'head', epoch {best}" in learn.console.file.getvalue()


def test_head_phases_see_larger_images_and_the_kept_phase_keeps_its_size(image_folder, tmp_path):
    learn = colour_learner(image_folder)
    learn.auto_fit(1, head_epochs=2, head_aug_epochs=1, head_scale=1.5, unfreeze=False)
    # the head solved on features and trained with augmentation at 1.5 x 32 = 48
    assert [e["size"] for e in learn.events.of("head_solved")] == [48]
    assert [f["size"] for f in learn.events.of("fit_start")] == [48]
    assert "the head phases see 48 px images (1.5x the size" in learn.console.file.getvalue()
    size = 48
    assert learn.dls.size == size and learn.preprocessing.size == size
    learn.save(tmp_path / "model")
    from snugfit import load_learner

    assert load_learner(tmp_path / "model").preprocessing.size == size


def test_head_scale_one_keeps_one_size_and_bad_scales_fail_first(image_folder):
    learn = colour_learner(image_folder)
    learn.auto_fit(1, head_epochs=1, head_aug_epochs=1, head_scale=1, lr_find=False,
                   unfreeze=False)  # fmt: skip
    assert [e["size"] for e in learn.events.of("head_solved")] == [32]
    assert [f["size"] for f in learn.events.of("fit_start")] == [32]
    assert "head phases see" not in learn.console.file.getvalue()
    with pytest.raises(SnugfitError, match="head_scale"):
        learn.auto_fit(1, head_scale=0)
