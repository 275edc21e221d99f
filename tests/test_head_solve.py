"""The head solved on stored features: the optimum, folded into the Linear layer."""

import io

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from snugfit import ImageDataLoaders, vision_learner
from snugfit.errors import SnugfitError
from snugfit.train import head_solve
from snugfit.train import precompute as pre


def features(n=60, seed=0):
    """Features on very different scales and offsets, one of them constant."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g) * torch.tensor([0.01, 1.0, 30.0, 2.0, 0.0])
    return x + torch.tensor([5.0, -3.0, 100.0, 0.0, 7.0])


def objective_in_standard_units(x, weight, bias, loss_of, wd):
    """The solver's objective at the solution, written in standardised features: its
    gradient there must vanish (an optimum), and the folded weights must give the
    same logits."""
    mean, sd = x.mean(0), x.std(0, unbiased=False)
    live = sd > 1e-6
    sd = sd.clamp(min=head_solve.SD_FLOOR * sd[live].median())  # the floor on the scale
    w = (weight * torch.where(live, sd, torch.ones_like(sd))).clone().requires_grad_(True)
    b = (bias + weight @ mean).clone().requires_grad_(True)
    z = torch.where(live, (x - mean) / torch.where(live, sd, torch.ones_like(sd)), 0.0)
    logits = z @ w.t() + b
    assert torch.allclose(logits, x @ weight.t() + bias, atol=1e-3)
    total = loss_of(logits) + wd / 2 * w.pow(2).sum()
    total.backward()
    return total.item(), torch.cat([w.grad.reshape(-1), b.grad])


def test_the_solution_is_the_optimum_of_the_penalised_softmax_loss():
    x = features()
    y = (
        (
            x[:, 1]
            + 0.05 * x[:, 2]
            - 5
            + 0.5 * torch.randn(60, generator=torch.Generator().manual_seed(1))
        )
        .gt(0)
        .long()
    )
    y[::7] = 2  # a third class
    weight, bias, loss = head_solve.solve_linear(x, y, 3, multi_label=False, wd=1e-2)
    assert weight.shape == (3, 5) and bias.shape == (3,)
    assert torch.all(weight[:, 4] == 0)  # the constant feature
    value, grad = objective_in_standard_units(
        x, weight, bias, lambda z: F.cross_entropy(z, y), 1e-2
    )
    assert value == pytest.approx(loss, rel=1e-4)
    assert grad.abs().max() < 1e-3
    # a stronger penalty: smaller standardised weights, a higher training loss
    weight2, _, loss2 = head_solve.solve_linear(x, y, 3, multi_label=False, wd=1.0)
    sd = x.std(0, unbiased=False).clamp(min=head_solve.SD_FLOOR)  # median sd: 1
    assert (weight2[:, :4] * sd[:4]).norm() < (weight[:, :4] * sd[:4]).norm() and loss2 > loss


def test_a_feature_that_barely_varies_gets_no_outsized_weight(monkeypatch):
    """A unit that hardly fires (deviation 1e-4 against the others' 1) but happens to
    split the training labels: standardised by its own deviation, its weight in raw
    units was in the thousands; scaled by the floor, it stays near the others'."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(80) % 2
    x = torch.randn(80, 6, generator=g)
    x[:, 0] = 1e-4 * (y.float() - 0.5 + 0.3 * torch.randn(80, generator=g))  # noise-sized
    weight, _, _ = head_solve.solve_linear(x, y, 2, multi_label=False, wd=1e-2)
    assert weight.abs().max() < 50
    monkeypatch.setattr(head_solve, "SD_FLOOR", 0.0)
    unfloored, _, _ = head_solve.solve_linear(x, y, 2, multi_label=False, wd=1e-2)
    assert unfloored[:, 0].abs().max() > 1000


def test_the_multi_label_solution_is_the_optimum_of_the_sigmoid_loss():
    x = features(seed=2)
    y = torch.stack([x[:, 1] > -3, x[:, 2] > 100, x[:, 3] > 1], 1).float()
    weight, bias, loss = head_solve.solve_linear(x, y, 3, multi_label=True, wd=1e-2)
    value, grad = objective_in_standard_units(
        x, weight, bias,
        lambda z: F.binary_cross_entropy_with_logits(z, y, reduction="sum") / len(z), 1e-2,
    )  # fmt: skip
    assert value == pytest.approx(loss, rel=1e-4)
    assert grad.abs().max() < 1e-3
    assert ((x @ weight.t() + bias > 0).float() == y).float().mean() > 0.9


def test_bad_input_fails_with_one_line():
    x, y = features(), torch.zeros(60, dtype=torch.long)
    with pytest.raises(SnugfitError, match="wd: expected a positive number"):
        head_solve.solve_linear(x, y, 2, multi_label=False, wd=0)
    with pytest.raises(SnugfitError, match="no training features"):
        head_solve.solve_linear(x[:0], y[:0], 2, multi_label=False)
    with pytest.raises(SnugfitError, match="1 of 60 images have non-finite features"):
        head_solve.solve_linear(x.clone().index_fill_(0, torch.tensor([3]), float("nan")), y, 2,
                                multi_label=False)  # fmt: skip
    with pytest.raises(SnugfitError, match=r"classifier is Linear\(4, 2\).*\(5, 2\) with a bias"):
        head_solve.write_linear(nn.Linear(4, 2), torch.zeros(2, 5), torch.zeros(2))


def learner(folder, **kw):
    torch.manual_seed(0)
    dls = ImageDataLoaders.from_folder(folder, bs=8, size=32, num_workers=0, seed=0)
    console = Console(file=io.StringIO(), width=200)
    learn = vision_learner(dls, "test_efficientnet", pretrained=False, metrics=["accuracy"],
                           precision="fp32", console=console, **kw)  # fmt: skip
    learn.freeze()  # random weights: freeze by hand, as pretrained models are
    return learn


def body_state(learn):
    head = {id(p) for p in learn.model.get_classifier().parameters()}
    return [p.detach().clone() for p in learn.model.parameters() if id(p) not in head]


def test_solve_head_writes_the_solution_into_the_head_only(image_folder):
    learn = learner(image_folder)
    before, body = learn.validate(), body_state(learn)
    loss = learn.solve_head(wd=1e-2)
    after = learn.validate()
    assert after["valid_loss"] < before["valid_loss"] and after["accuracy"] == 1.0
    for a, b in zip(body, body_state(learn), strict=True):
        assert torch.equal(a, b)
    assert learn.recorder.rows == [] and learn.events.of("fit_start") == []  # no epoch, no fit
    event = learn.events.of("head_solved")[-1]
    assert event["images"] == 16 and event["size"] == 32 and event["train_loss"] == loss
    # the solution of the training images' features, as validation shows the images
    feats, targs = pre.compute_features(learn, learn.dls.train.as_evaluated())
    weight, bias, _ = head_solve.solve_linear(feats, targs, 2, multi_label=False, wd=1e-2)
    head = learn.model.get_classifier()
    assert torch.allclose(head.weight, weight) and torch.allclose(head.bias, bias)


def test_solve_head_refuses_an_unfrozen_body_and_other_heads(image_folder):
    learn = learner(image_folder)
    learn.unfreeze()
    with pytest.raises(SnugfitError, match="the body must be frozen"):
        learn.solve_head()
    learn.freeze()
    learn.model.classifier = nn.Sequential(learn.model.classifier)
    assert not learn.can_solve_head
    with pytest.raises(SnugfitError, match="one Linear layer"):
        learn.solve_head()


def test_training_images_are_evaluated_with_the_validation_transform(image_folder):
    dls = ImageDataLoaders.from_folder(image_folder, bs=8, size=32, num_workers=0, seed=0)
    train = dls.train
    evaluated = train.as_evaluated()
    x1 = torch.cat([x for x, _ in evaluated])
    x2 = torch.cat([x for x, _ in evaluated])
    assert x1.shape == (16, 3, 32, 32) and torch.equal(x1, x2)  # never augmented
    assert train.epoch == 0  # the training loader's epochs are untouched
    paths = [path for path, _ in train.items]  # in the items' order
    assert torch.allclose(x1, dls.test_tensor(paths), atol=2e-2)


def test_auto_fit_solves_the_head_only_when_the_body_stays_frozen(image_folder):
    learn = learner(image_folder)
    learn.auto_fit(1, head_epochs=2, head_scale=1, lr_find=False, unfreeze=False)
    out = learn.console.file.getvalue()
    assert "phase: head solved on precomputed features" in out
    assert "head: logistic regression by L-BFGS on the stored features" in out
    assert "valid loss" in out and "accuracy 1.0000" in out  # no epoch table: said here
    assert learn.events.of("head_validated")[-1]["accuracy"] == 1.0
    assert learn.events.of("fit_start") == []  # no epoch of augmentation after a solve
    assert learn.events.of("kept")[-1]["phase"] == "head (solved)"
    assert learn.validate()["accuracy"] == 1.0
    # the body trains: the head is trained by epochs, not solved
    learn = learner(image_folder)
    learn.auto_fit(1, head_epochs=2, head_scale=1, lr_find=False, unfreeze=True)
    out = learn.console.file.getvalue()
    assert "phase: head on precomputed features" in out and "solved" not in out
    assert learn.events.of("head_solved") == []
    # solve_head=False: epochs, then one of augmentation, as before the solver
    learn = learner(image_folder)
    learn.auto_fit(1, head_epochs=2, head_scale=1, lr_find=False, unfreeze=False,
                   solve_head=False)  # fmt: skip
    assert len(learn.events.of("fit_start")) == 2 and learn.events.of("head_solved") == []


def test_a_resumed_auto_fit_does_not_solve_again(image_folder):
    learn = learner(image_folder)
    learn.recipe_state["head_solved"] = True  # as a checkpoint written after it holds
    head = [p.detach().clone() for p in learn.model.get_classifier().parameters()]
    learn.auto_fit(1, head_epochs=2, head_scale=1, lr_find=False, unfreeze=False)
    assert "head: solved before the checkpoint" in learn.console.file.getvalue()
    assert learn.events.of("head_solved") == []
    for a, b in zip(head, learn.model.get_classifier().parameters(), strict=True):
        assert torch.equal(a, b)
    # the run over, a later auto_fit solves afresh
    learn.auto_fit(1, head_epochs=2, head_scale=1, lr_find=False, unfreeze=False)
    assert len(learn.events.of("head_solved")) == 1


def test_features_on_disk_train_the_head_by_epochs(image_folder, monkeypatch):
    monkeypatch.setattr(pre, "IN_MEMORY_LIMIT", 0)  # every feature array memory-mapped
    learn = learner(image_folder)
    assert not learn.features_in_memory()
    learn.auto_fit(1, head_epochs=1, head_scale=1, lr_find=False, unfreeze=False)
    out = learn.console.file.getvalue()
    assert "too large for memory (memory-mapped from disk): the head trains by epochs" in out
    assert "phase: head on precomputed features" in out
    assert learn.events.of("head_solved") == []
