"""Precomputed frozen features: same head gradients, cached, invalidated on change."""

import pytest
import torch

from snugfit import ImageDataLoaders, vision_learner
from snugfit.infer.interpret import ClassificationInterpretation
from snugfit.train import precompute as pre


def colour_learner(folder, **kw):
    torch.manual_seed(0)
    dls = ImageDataLoaders.from_folder(folder, bs=8, size=32, num_workers=0, seed=0)
    learn = vision_learner(
        dls, "test_efficientnet", pretrained=False, metrics=["accuracy"], precision="fp32", **kw
    )
    learn.freeze()  # random weights: freeze by hand, as pretrained models are
    return learn


def head_grads(learn, net, x, y):
    learn.opt.zero_grad()
    learn.loss_func(net(x), y).backward()
    return [p.grad.clone() for p in learn.model.get_classifier().parameters()]


def test_head_gradients_equal_the_full_forward(image_folder):
    learn = colour_learner(image_folder)
    learn.model.eval()  # frozen body: BN in eval, no dropout
    learn.dls.augment = False
    xb, yb = next(iter(learn.dls.valid))
    full = head_grads(learn, learn.model, xb, yb)
    feats, targs = pre.compute_features(learn, [(xb, yb)])
    assert torch.equal(targs, yb)
    from_features = head_grads(learn, learn.model.get_classifier(), feats, yb)
    for a, b in zip(full, from_features, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_precomputed_training_is_cached_and_invalidated(image_folder, monkeypatch):
    learn = colour_learner(image_folder, precompute=True)
    calls = []
    original = pre.compute_features
    monkeypatch.setattr(
        pre, "compute_features", lambda learn, dl, *_: calls.append(1) or original(learn, dl)
    )
    learn.fit_one_cycle(6, 3e-2)
    assert len(calls) == 2  # train and valid, once
    assert learn.recorder.rows[-1]["accuracy"] == 1.0
    learn.fit(1, 1e-3)
    assert len(calls) == 2  # same weights, size and data: reused
    # validation on features equals validation through the whole model
    on_features = learn.recorder.rows[-1]["valid_loss"]
    assert abs(learn.validate()["valid_loss"] - on_features) < 1e-5
    # a new size changes the features
    learn.dls.set_size(40)
    learn.fit(1, 1e-3)
    assert len(calls) == 4
    # unfrozen: images again, and training the body changes the key
    learn.unfreeze()
    learn.fit(1, 1e-3)
    assert len(calls) == 4
    learn.freeze()
    learn.fit(1, 1e-3)
    assert len(calls) == 6


def test_precompute_off_trains_through_the_model(image_folder, monkeypatch):
    learn = colour_learner(image_folder, precompute=True)
    learn.precompute = False
    monkeypatch.setattr(pre, "compute_features", lambda *a: (_ for _ in ()).throw(AssertionError))
    learn.fit(1, 1e-3)
    assert learn.net is learn.model


def test_a_frozen_body_validates_on_its_stored_features(image_folder):
    learn = colour_learner(image_folder)
    full_loss, full_metrics = learn.evaluate(learn.dls.valid)  # the whole model
    full_out, full_targets = learn.get_preds()
    body_calls = []
    learn.model.conv_stem.register_forward_hook(lambda *a: body_calls.append(1))
    learn.precompute_features()
    n = len(body_calls)
    assert n > 0  # the features were computed through the body
    # the head on the stored validation features: the same figures, no body pass
    got = learn.validate()
    assert len(body_calls) == n
    assert got["valid_loss"] == pytest.approx(full_loss, abs=1e-5)
    assert got["accuracy"] == pytest.approx(full_metrics["accuracy"])
    out, targets = learn.get_preds()  # the report's interpretation reads them too
    assert len(body_calls) == n
    interp = ClassificationInterpretation.from_learner(learn)  # passes dls.valid itself
    assert len(body_calls) == n and torch.allclose(interp.probs, full_out.softmax(1), atol=1e-5)
    assert torch.allclose(out, full_out, atol=1e-5) and torch.equal(targets, full_targets)
    # a fit training the head on images (precompute off) validates on them too
    learn.fit_one_cycle(1, 1e-3)
    assert len(body_calls) - n == len(learn.dls.train)  # its training batches only
    # an unfrozen body: the stored features no longer apply; the body runs
    learn.unfreeze()
    before = len(body_calls)
    learn.validate()
    assert len(body_calls) > before
    before = len(body_calls)
    learn.get_preds()
    assert len(body_calls) > before


def test_a_precision_trial_times_fp32_against_bf16_then_keeps_the_faster(image_folder, monkeypatch):
    learn = colour_learner(image_folder)
    learn.dls.bs = 2  # 8 training batches
    seen = []
    original = learn.eval_outputs

    def eval_outputs(xb, precision=None, net=None):
        seen.append(precision)
        return original(xb, precision, net)

    monkeypatch.setattr(learn, "eval_outputs", eval_outputs)
    monkeypatch.setattr(pre, "pick", lambda times: "bf16" if all(times.values()) else "?")
    trial = pre.PrecisionTrial()
    feats, _ = pre.compute_features(learn, learn.dls.train.as_evaluated(), trial)
    assert seen == ["fp32", "bf16", "fp32", "bf16"] + ["bf16"] * 4
    assert [len(t) for t in trial.times.values()] == [2, 2] and trial.chosen == "bf16"
    seen.clear()
    pre.compute_features(learn, learn.dls.valid, trial)  # the choice carries over
    assert seen == ["bf16"] * len(learn.dls.valid)
    # bf16 features are fp32's to bf16's precision
    seen.clear()
    exact, _ = pre.compute_features(learn, learn.dls.train.as_evaluated())
    assert seen == [None] * 8  # no trial: the learner's own precision
    assert torch.allclose(feats[8:], exact[8:], rtol=2e-2, atol=2e-2)
    assert not torch.equal(feats[8:], exact[8:])
    assert not learn.precision_is_timed  # precision="fp32": features get no trial
