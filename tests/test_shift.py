"""How unlike the pretraining data a batch looks to BatchNorm statistics."""

import io

import pytest
import torch
from rich.console import Console
from torch import nn

from snugfit import ImageDataLoaders, vision_learner
from snugfit.errors import SnugfitError
from snugfit.models import batchnorm_shift


def standardised(shape, mean, std):
    """Per channel exactly ``mean`` and (unbiased) ``std``."""
    x = torch.randn(shape)
    dims = [0, 2, 3]
    x = (x - x.mean(dims, keepdim=True)) / x.std(dims, keepdim=True)
    return x * std + mean


class ThreeNorms(nn.Module):
    def __init__(self):
        super().__init__()
        self.norms = nn.Sequential(nn.BatchNorm2d(2), nn.BatchNorm2d(2), nn.BatchNorm2d(2))

    def forward(self, x):
        for norm in self.norms:  # each sees the same input: only the statistics differ
            norm(x)
        return x


def test_the_divergence_is_the_gaussians_kl_over_the_deepest_third():
    model = ThreeNorms().train()
    with torch.no_grad():  # stored statistics: mean 0, variance 1 in the deepest layer
        model.norms[0].running_mean.fill_(50.0)  # far off, but not in the deepest third
    x = standardised((16, 2, 5, 5), mean=1.0, std=2.0)
    shift = batchnorm_shift(model, lambda: model(x))
    # KL(N(1, 4) || N(0, 1)) = (4 + 1 - 1 - ln 4) / 2
    assert shift == pytest.approx((4 - torch.log(torch.tensor(4.0)).item()) / 2, rel=1e-4)
    assert model.training  # its mode is put back
    assert not model.norms[2]._forward_hooks  # and no hook left behind
    # data matching the stored statistics: no shift
    same = standardised((16, 2, 5, 5), mean=0.0, std=1.0)
    assert batchnorm_shift(model, lambda: model(same)) == pytest.approx(0.0, abs=1e-4)


def test_the_statistics_are_pooled_over_every_call():
    model = ThreeNorms()
    x = torch.randn(12, 2, 5, 5) * 3 + 2
    whole = batchnorm_shift(model, lambda: model(x))
    chunked = batchnorm_shift(model, lambda: [model(c) for c in x.split(5)])
    assert chunked == pytest.approx(whole, rel=1e-6)


def test_no_batchnorm_no_figure():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LayerNorm([4, 6, 6]))
    assert batchnorm_shift(model, lambda: model(torch.zeros(2, 3, 8, 8))) is None


def test_a_freshly_built_part_is_not_compared():
    class WithDecoder(ThreeNorms):
        def fresh_modules(self):
            return [self.norms[2]]  # the deepest layer has no pretraining to compare with

    model = WithDecoder()
    with torch.no_grad():
        model.norms[1].running_mean.fill_(1.0)  # now the deepest pretrained one
    x = standardised((16, 2, 5, 5), mean=1.0, std=1.0)
    assert batchnorm_shift(model, lambda: model(x)) == pytest.approx(0.0, abs=1e-4)


def learner(folder):
    torch.manual_seed(0)
    dls = ImageDataLoaders.from_folder(folder, bs=8, size=32, num_workers=0, seed=0)
    console = Console(file=io.StringIO(), width=200)
    return vision_learner(dls, "test_efficientnet", pretrained=False, precision="fp32",
                          console=console)  # fmt: skip


def test_the_learner_measures_its_training_images_without_augmentation(image_folder):
    learn = learner(image_folder)
    epoch = learn.dls.train.epoch
    shift = learn.pretraining_shift()
    assert shift > 0
    assert learn.dls.train.epoch == epoch  # counts no epoch
    assert learn.pretraining_shift() == pytest.approx(shift, rel=1e-6)  # not augmented


def test_the_measure_reads_the_same_images_whatever_the_batch_size(image_folder):
    small = ImageDataLoaders.from_folder(image_folder, bs=3, size=32, num_workers=0, seed=0)
    x, y = small.train.first_images(7, augment=False)
    assert len(x) == 9 and len(y) == 9  # whole batches: 3 of 3
    first, _ = small.train.one_batch(augment=False)
    assert torch.equal(first, x[:3])
    everything, _ = small.train.first_images(10**6, augment=False)
    assert len(everything) == len(small.train_items)
    assert small.train.epoch == 0
    shifts = []
    for bs in (4, 32):
        torch.manual_seed(0)
        dls = ImageDataLoaders.from_folder(image_folder, bs=bs, size=32, num_workers=0, seed=0)
        learn = vision_learner(dls, "test_efficientnet", pretrained=False, precision="fp32",
                               console=Console(file=io.StringIO()))  # fmt: skip
        shifts.append(learn.pretraining_shift())
    assert shifts[0] == pytest.approx(shifts[1], rel=1e-4)


def test_auto_fit_keeps_the_body_frozen_for_data_like_the_pretraining(image_folder):
    learn = learner(image_folder)
    learn.auto_fit(1, head_epochs=1, head_scale=1.5, lr_find=False, max_shift=1e9)
    out = learn.console.file.getvalue()
    assert "the body stays frozen (BatchNorm shift" in out and " at 48 px, limit 1e+09)" in out
    assert "phase: unfrozen" not in out
    # the head solved at 1.5x, and nothing trained by epochs after it
    assert [e["size"] for e in learn.events.of("head_solved")] == [48]
    assert learn.events.of("fit_start") == []
    event = learn.events.of("unfreeze")[-1]
    assert event["decision"] is False and event["shift"] > 0
    assert learn.frozen_to == len(learn.groups) - 1


def test_auto_fit_trains_the_body_for_data_unlike_it_with_the_head_at_its_size(image_folder):
    learn = learner(image_folder)
    learn.auto_fit(1, head_epochs=1, head_scale=1.5, lr_find=False, max_shift=1e-9,
                   stop_if_no_gain=False)  # fmt: skip
    out = learn.console.file.getvalue()
    assert "the body will train (BatchNorm shift" in out and "phase: unfrozen" in out
    # a head that the body's training starts from is fitted at the body's size
    assert [f["size"] for f in learn.events.of("fit_start")] == [32, 32, 32]
    assert learn.events.of("unfreeze")[-1]["decision"] is True


def test_a_decision_taken_is_not_measured_again_and_bad_values_fail(image_folder, monkeypatch):
    learn = learner(image_folder)
    learn.recipe_state["unfreeze"] = False  # as a checkpoint of a run that decided carries

    def measure():
        raise AssertionError("measured again")

    monkeypatch.setattr(learn, "pretraining_shift", measure)
    learn.auto_fit(1, head_epochs=1, head_aug_epochs=0, lr_find=False)
    assert "phase: unfrozen" not in learn.console.file.getvalue()
    # unfreeze=True asks for no measurement
    learn.auto_fit(1, head_epochs=1, head_aug_epochs=0, lr_find=False, unfreeze=True,
                   stop_if_no_gain=False)  # fmt: skip
    assert "phase: unfrozen" in learn.console.file.getvalue()
    with pytest.raises(SnugfitError, match="unfreeze: expected True, False or 'auto'"):
        learn.auto_fit(1, unfreeze="sometimes")
    with pytest.raises(SnugfitError, match="max_shift"):
        learn.auto_fit(1, max_shift=-1)
