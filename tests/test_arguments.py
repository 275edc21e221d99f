"""Bad arguments to the Python API: one SnugfitError naming the argument and the accepted form.

(The command line's checks are in test_cli.py.) Each case must fail *before*
anything runs: a recipe that trains for minutes and then rejects an argument
would lose the user's time.
"""

import pytest

from snugfit.data.loaders import ImageDataLoaders
from snugfit.errors import SnugfitError
from snugfit.memory import parse_bytes
from snugfit.train.factory import vision_learner


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"bs": 0}, "bs: must be a positive integer, got 0"),
        ({"bs": 2.5}, "bs: must be a positive integer, got 2.5"),
        ({"size": "224"}, "size: must be a positive integer, got '224'"),
        ({"presize": 16, "size": 32}, "presize: must be at least size (32), got 16"),
        ({"valid_pct": 2}, "valid_pct: must be between 0 and 1"),
        ({"num_workers": -1}, "num_workers: must be an integer >= 0, got -1"),
        ({"crop_pct": 0}, "crop_pct: must be in (0, 1], got 0"),
        ({"max_rotate": -5}, "max_rotate: must be degrees in [0, 180], got -5"),
        ({"max_lighting": 2}, "max_lighting: must be in [0, 1), got 2"),
        ({"seed": "x"}, "seed: must be an integer, got 'x'"),
        ({"device": "gpu"}, "device: cannot read 'gpu'; use cpu, cuda or cuda:N"),
        ({"cache_size": "lots"}, "cannot read 'lots'; use e.g. 8GB"),
    ],
)
def test_loader_arguments(image_folder, kwargs, expected):
    with pytest.raises(SnugfitError) as info:
        ImageDataLoaders.from_folder(image_folder, **{"num_workers": 0, **kwargs})
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_cuda_device_that_is_not_there(image_folder, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 1)
    with pytest.raises(SnugfitError, match=r"'cuda:3' asked for, but there are only 1 GPU"):
        ImageDataLoaders.from_folder(image_folder, device="cuda:3")
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(SnugfitError, match="CUDA is not available here"):
        ImageDataLoaders.from_folder(image_folder, device="cuda")


@pytest.fixture
def dls(image_folder):
    return ImageDataLoaders.from_folder(image_folder, size=32, bs=4, num_workers=0)


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"memory_budget": "8 parsecs"}, "memory_budget: cannot read '8 parsecs'; use e.g. 8GB"),
        ({"memory_budget": "1.5"}, "memory_budget: cannot read '1.5'"),
        ({"memory_budget": 0}, "memory_budget: cannot read 0"),
        ({"micro_bs": 0}, "micro_bs: expected a positive integer or None, got 0"),
        ({"accumulate": -2}, "accumulate: expected a positive integer or None, got -2"),
        ({"precision": "fp8"}, "precision: unknown value 'fp8'; use one of auto, fp32"),
        ({"opt": "adam2"}, "opt: unknown optimizer 'adam2'; choose one of adamw, sgd"),
        ({"wd": -1}, "wd: weight decay must be a number >= 0, got -1"),
        ({"wd": "x"}, "wd: weight decay must be a number >= 0, got 'x'"),
    ],
)
def test_learner_arguments(dls, kwargs, expected):
    with pytest.raises(SnugfitError) as info:
        vision_learner(dls, "test_resnet", pretrained=False, **kwargs)
    assert expected in str(info.value)


@pytest.mark.parametrize(
    "call, expected",
    [
        (lambda learn: learn.fit(0), "n_epoch: expected a positive integer, got 0"),
        (lambda learn: learn.fit(2.5), "n_epoch: expected a positive integer, got 2.5"),
        (lambda learn: learn.fit(1, lr=-1), "lr: learning rates must be positive numbers"),
        (lambda learn: learn.fit(1, lr=float("nan")), "lr: learning rates must be positive"),
        (lambda learn: learn.fit(1, lr="fast"), "lr: expected a positive number, a slice"),
        (lambda learn: learn.fit(1, lr=slice(-1, 1e-3)), "lr: slice bounds must be positive"),
        (lambda learn: learn.fit(1, lr=[1e-3]), "lr: got 1 learning rates for"),
        (lambda learn: learn.fit_one_cycle(1, lr_max=0), "lr: learning rates must be positive"),
        (lambda learn: learn.fine_tune(-1), "epochs: expected an integer >= 0, got -1"),
        (lambda learn: learn.fine_tune(1, freeze_epochs=-1), "freeze_epochs: expected an"),
        (lambda learn: learn.fine_tune(1, base_lr=-2), "base_lr: expected a positive number"),
        (lambda learn: learn.auto_fit(-1), "epochs: expected an integer >= 0, got -1"),
        (lambda learn: learn.auto_fit(1, head_epochs=1.5), "head_epochs: expected an integer"),
        (lambda learn: learn.auto_fit(1, lr_mult=0), "lr_mult: expected a positive number"),
        (lambda learn: learn.auto_fit(1, sizes=[32, 0]), "sizes: expected an integer >= 1"),
        (lambda learn: learn.lr_find(num_it=0), "num_it: expected an integer >= 2, got 0"),
        (lambda learn: learn.plan("lots"), "budget: cannot read 'lots'"),
    ],
)
def test_training_call_arguments_fail_before_training(dls, call, expected):
    learn = vision_learner(dls, "test_resnet", pretrained=False)
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    with pytest.raises(SnugfitError) as info:
        call(learn)
    assert expected in str(info.value)
    after = learn.model.state_dict()
    assert all(v.equal(after[k]) for k, v in before.items()), "nothing trained"
    assert learn.recorder.rows == []


@pytest.mark.parametrize(
    "text, total, expected",
    [
        ("8GB", None, 8 * 10**9),
        ("8GiB", None, 8 * 2**30),
        ("7500MB", None, 7500 * 10**6),
        ("0.5", 16 * 2**30, 8 * 2**30),
        (0.5, 16 * 2**30, 8 * 2**30),
    ],
)
def test_accepted_budget_forms(text, total, expected):
    assert parse_bytes(text, total=total) == expected
