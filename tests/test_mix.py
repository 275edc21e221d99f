"""Label smoothing, MixUp and CutMix: the math against hand computations, the
callbacks in the loop (features, validation, micro-batches, resume), the CLI flags."""

import json
import math
import re
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from snugfit import (
    CutMix,
    ImageDataLoaders,
    LabelSmoothingCrossEntropy,
    Learner,
    MixUp,
    load_learner,
    vision_learner,
)
from snugfit.app.config import TrainConfig
from snugfit.app.run import check_regularisation, regularisation
from snugfit.callbacks import Callback, SaveCheckpoint
from snugfit.callbacks.cutmix import box_lam, cutmix_batch, cutmix_box
from snugfit.callbacks.mixup import mixup_batch, soft_targets
from snugfit.errors import SnugfitError
from snugfit.models import create_model
from snugfit.tasks import MultiLabel, Segmentation, SingleLabel, smooth_labels
from test_learner import fake_dls, make_learner, quiet, snapshot

LOGITS = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])


def hand_loss(logits, targets, eps):
    """Cross-entropy against ``(1 - eps) * t + eps / C``, one number at a time."""
    total = 0.0
    for row, t in zip(logits.tolist(), targets, strict=True):
        lse = math.log(sum(math.exp(v) for v in row))
        c = len(row)
        total += -sum(((1 - eps) * tc + eps / c) * (v - lse) for v, tc in zip(row, t, strict=True))
    return total / len(logits)


# -- the loss -----------------------------------------------------------------------


def test_label_smoothing_on_class_indices_is_the_hand_computation():
    loss = LabelSmoothingCrossEntropy(eps=0.2)(LOGITS, torch.tensor([0, 2]))
    assert loss.item() == pytest.approx(hand_loss(LOGITS, [[1, 0, 0], [0, 0, 1]], 0.2), abs=1e-6)
    # torch's own label smoothing agrees on class indices
    torch_ls = F.cross_entropy(LOGITS, torch.tensor([0, 2]), label_smoothing=0.2)
    assert loss.item() == pytest.approx(torch_ls.item(), abs=1e-6)


def test_label_smoothing_on_soft_targets_is_the_hand_computation():
    soft = torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.25, 0.75]])
    loss = LabelSmoothingCrossEntropy(eps=0.1)(LOGITS, soft)
    assert loss.item() == pytest.approx(hand_loss(LOGITS, soft.tolist(), 0.1), abs=1e-6)
    per_sample = LabelSmoothingCrossEntropy(0.1, reduction="none")(LOGITS, soft)
    total = LabelSmoothingCrossEntropy(0.1, reduction="sum")(LOGITS, soft)
    assert per_sample.shape == (2,) and total.item() == pytest.approx(2 * loss.item(), abs=1e-6)
    # one-hot rows as probabilities give the class-index loss
    onehot = LabelSmoothingCrossEntropy(0.1)(LOGITS, F.one_hot(torch.tensor([1, 0]), 3).float())
    indices = LabelSmoothingCrossEntropy(0.1)(LOGITS, torch.tensor([1, 0]))
    assert onehot.item() == pytest.approx(indices.item(), abs=1e-6)


def test_eps_zero_is_plain_cross_entropy():
    ls = LabelSmoothingCrossEntropy(eps=0.0)
    y = torch.tensor([1, 2])
    assert ls(LOGITS, y).item() == pytest.approx(F.cross_entropy(LOGITS, y).item(), abs=1e-6)
    soft = torch.tensor([[0.5, 0.5, 0.0], [0.1, 0.2, 0.7]])
    assert ls(LOGITS, soft).item() == pytest.approx(F.cross_entropy(LOGITS, soft).item(), abs=1e-6)


def test_smooth_labels_and_bad_arguments():
    got = smooth_labels(torch.tensor([3]), 4, 0.4)
    assert torch.allclose(got, torch.tensor([[0.1, 0.1, 0.1, 0.7]]))
    soft = smooth_labels(torch.tensor([[0.5, 0.5, 0.0, 0.0]]), 4, 0.4)
    assert torch.allclose(soft, torch.tensor([[0.4, 0.4, 0.1, 0.1]]))
    for eps in (1.0, -0.1, "0.1", True):
        with pytest.raises(SnugfitError, match=r"^eps: "):
            LabelSmoothingCrossEntropy(eps)
    with pytest.raises(SnugfitError, match=r"^reduction: "):
        LabelSmoothingCrossEntropy(0.1, reduction="max")
    with pytest.raises(SnugfitError, match=r"^targets: "):
        LabelSmoothingCrossEntropy()(LOGITS, torch.zeros(2, 4))


# -- the math of the mixes ------------------------------------------------------------


def test_mixup_batch_blends_images_and_targets():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 5, 6, generator=g)
    y = soft_targets(torch.tensor([0, 1, 2, 1]), 3, multi_label=False)
    perm = torch.tensor([2, 0, 3, 1])
    xm, ym = mixup_batch(x, y, 0.3, perm)
    for i, j in enumerate(perm.tolist()):
        assert torch.allclose(xm[i], 0.3 * x[i] + 0.7 * x[j])
    expected = [[0.3, 0.0, 0.7], [0.7, 0.3, 0.0], [0.0, 0.7, 0.3], [0.0, 1.0, 0.0]]
    assert torch.allclose(ym, torch.tensor(expected))
    # multi-label: the multi-hot rows themselves, mixed with the same weight
    multi = soft_targets(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), 2, multi_label=True)
    _, ym = mixup_batch(torch.zeros(2, 1, 1, 1), multi, 0.25, torch.tensor([1, 0]))
    assert torch.allclose(ym, torch.tensor([[1.0, 0.75], [1.0, 0.25]]))


@pytest.mark.parametrize("lam", [0.0, 0.1, 0.5, 0.9, 0.99])
def test_cutmix_box_area_is_the_corrected_lam(lam):
    g = torch.Generator().manual_seed(3)
    h, w = 20, 30
    for _ in range(50):
        (top, bottom, left, right), corrected = cutmix_box(h, w, lam, g)
        assert 0 <= top <= bottom <= h and 0 <= left <= right <= w
        area = (bottom - top) * (right - left)
        assert corrected == pytest.approx(1 - area / (h * w))
        # never more than the asked box (2 * half of int(side * sqrt(1 - lam)))
        assert bottom - top <= int(h * math.sqrt(1 - lam)) and right - left <= int(
            w * math.sqrt(1 - lam)
        )
    # a centre far from the edges: the box is the asked size, rounded down to even sides
    g = torch.Generator().manual_seed(0)
    boxes = [cutmix_box(100, 100, 0.75, g) for _ in range(200)]
    inside = [(b, lam) for b, lam in boxes if b[0] > 0 and b[1] < 100 and b[2] > 0 and b[3] < 100]
    assert inside and all(lam == pytest.approx(0.75) for _, lam in inside)  # 50x50 of 100x100


def test_cutmix_batch_pastes_only_the_box():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 2, 6, 8, generator=g)
    y = soft_targets(torch.tensor([0, 1, 2]), 3, multi_label=False)
    perm, box = torch.tensor([1, 2, 0]), (1, 4, 2, 7)  # 3 x 5 of 6 x 8
    xm, ym = cutmix_batch(x, y, box, perm)
    inside = torch.zeros(6, 8, dtype=torch.bool)
    inside[1:4, 2:7] = True
    for i, j in enumerate(perm.tolist()):
        assert torch.equal(xm[i][:, inside], x[j][:, inside])
        assert torch.equal(xm[i][:, ~inside], x[i][:, ~inside])
    lam = 1 - 15 / 48
    assert box_lam(box, 6, 8) == pytest.approx(lam)
    assert torch.allclose(ym, lam * y + (1 - lam) * y[perm])
    assert torch.allclose(ym.sum(1), torch.ones(3))


# -- the callbacks ------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [MixUp, CutMix])
def test_features_pass_through_and_segmentation_is_refused(cls):
    cb = cls()
    feats, yb = torch.randn(4, 16), torch.tensor([0, 1, 2, 0])
    learn = SimpleNamespace(xb=feats, yb=yb, dls=SimpleNamespace(c=3), task=SingleLabel())
    cb.before_fit(learn)
    state = torch.get_rng_state()
    cb.before_batch(learn)
    assert learn.xb is feats and learn.yb is yb and cb.lam is None
    assert torch.equal(torch.get_rng_state(), state)  # nothing drawn
    with pytest.raises(SnugfitError, match=f"^{cls.__name__}: not supported for segmentation"):
        cb.before_fit(SimpleNamespace(task=Segmentation()))


@pytest.mark.parametrize("alpha", [0, -1.0, float("nan"), "0.4"])
def test_alpha_must_be_positive(alpha):
    for cls in (MixUp, CutMix):
        with pytest.raises(SnugfitError, match=r"^alpha: "):
            cls(alpha)


def test_segmentation_learner_refuses_mixup_at_fit():
    from test_segmentation_learner import seg_learner

    learn = seg_learner(cbs=[CutMix()])
    before = snapshot(learn.model)
    with pytest.raises(SnugfitError, match=r"^CutMix: not supported for segmentation"):
        learn.fit(1, 1e-3)
    after = snapshot(learn.model)
    assert all(torch.equal(before[k], after[k]) for k in before)


class Seen(Callback):
    """Keeps each training batch as the step receives it (after the mixing callbacks)."""

    order = 1

    def __init__(self):
        self.batches = []

    def before_batch(self, learn):
        self.batches.append((learn.xb.clone(), learn.yb.clone()))


@pytest.mark.parametrize("cls", [MixUp, CutMix])
def test_training_mixes_batches_and_validation_sees_them_plain(cls):
    mix, seen = cls(), Seen()
    learn = make_learner(cbs=[mix, seen])
    before = snapshot(learn.model)
    learn.fit(1, 1e-2)
    after = snapshot(learn.model)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    x, y = learn.dls.train[-1]
    xm, ym = seen.batches[-1]
    # the last batch is the plain batch mixed with the callback's own draw
    plain_y = F.one_hot(y, 3).float()
    if cls is MixUp:
        exp_x, exp_y = mixup_batch(x, plain_y, mix.lam, mix.perm)
    else:
        exp_x, exp_y = cutmix_batch(x, plain_y, mix.box, mix.perm)
    assert torch.allclose(xm, exp_x) and torch.allclose(ym, exp_y)
    assert ym.shape == (8, 3) and torch.allclose(ym.sum(1), torch.ones(8))
    # the recorded training loss is the mean loss over the mixed batches: sane, finite
    row = learn.recorder.rows[-1]
    assert 0 < row["train_loss"] < 3 * math.log(3)
    # validation: the plain batches (the callback only acts in the training loop)
    recorded = row["valid_loss"]
    learn.cbs.remove(mix)
    assert learn.validate()["valid_loss"] == pytest.approx(recorded, abs=1e-6)
    learn.model.eval()
    vx, vy = learn.dls.valid[0]
    with torch.no_grad():
        assert F.cross_entropy(learn.model(vx), vy).item() == pytest.approx(recorded, abs=1e-5)


def test_mixup_with_label_smoothing_trains_and_micro_batches_split_soft_targets():
    calls = []

    class Spy(LabelSmoothingCrossEntropy):
        def forward(self, logits, targets):
            calls.append(targets.clone())
            return super().forward(logits, targets)

    # BatchNorm uses its running statistics in both (micro-batch and batch < 16), so
    # the micro-batched gradients equal the whole batch's
    seen = Seen()
    # (each learner draws from the global generator as seeded when it is made)
    whole = make_learner(loss_func=LabelSmoothingCrossEntropy(0.1), cbs=[MixUp()])
    whole.fit(1, 1e-2)
    micro = make_learner(loss_func=Spy(0.1), cbs=[MixUp(), seen], micro_bs=2)
    micro.fit(1, 1e-2)
    a, b = snapshot(whole.model), snapshot(micro.model)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    # each batch of 8 went to the loss as four (2, 3) soft-target slices, in order
    assert [tuple(t.shape) for t in calls[:4]] == [(2, 3)] * 4
    assert torch.equal(torch.cat(calls[:4]), seen.batches[0][1])
    assert whole.recorder.rows[-1]["train_loss"] == pytest.approx(
        micro.recorder.rows[-1]["train_loss"], abs=1e-5
    )


def test_multi_label_mixes_multi_hot_targets():
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 3, 32, 32, generator=g), (torch.rand(8, 3, generator=g) > 0.5).float())
               for _ in range(2)]  # fmt: skip
    dls = fake_dls()
    dls.train, dls.valid, dls.multi_label = batches, batches[:1], True
    mix, seen = MixUp(), Seen()
    torch.manual_seed(0)
    learn = Learner(dls, create_model("test_resnet", 3, pretrained=False), cbs=[mix, seen],
                    precision="fp32", console=quiet())  # fmt: skip
    assert isinstance(learn.task, MultiLabel)
    learn.fit(1, 1e-2)
    y = batches[-1][1]
    assert torch.allclose(seen.batches[-1][1], mix.lam * y + (1 - mix.lam) * y[mix.perm])
    assert math.isfinite(learn.recorder.rows[-1]["train_loss"])
    with pytest.raises(SnugfitError, match=r"^loss_func: LabelSmoothingCrossEntropy is for single"):
        Learner(dls, create_model("test_resnet", 3, pretrained=False),
                loss_func=LabelSmoothingCrossEntropy(), console=quiet())  # fmt: skip


def test_precomputed_features_train_the_same_with_mixup(image_folder):
    from test_precompute import colour_learner

    mix = MixUp()
    plain = colour_learner(image_folder, precompute=True)
    plain.fit(1, 1e-2)
    mixed = colour_learner(image_folder, precompute=True, cbs=[mix])
    mixed.fit(1, 1e-2)
    assert mixed.net is mixed.model and mix.lam is None  # it saw 2-D features only
    a, b = snapshot(plain.model), snapshot(mixed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_label_smoothing_learner_predicts_saves_and_loads(image_folder, tmp_path):
    torch.manual_seed(0)
    dls = ImageDataLoaders.from_folder(image_folder, bs=8, size=32, num_workers=0, seed=0)
    learn = vision_learner(dls, "test_efficientnet", pretrained=False, precision="fp32",
                           loss_func=LabelSmoothingCrossEntropy(0.1), cbs=[CutMix()],
                           console=quiet())  # fmt: skip
    learn.fit(1, 1e-3)
    outs, targs = learn.get_preds()
    row = learn.recorder.rows[-1]
    expected = LabelSmoothingCrossEntropy(0.1)(outs.float(), targs).item()
    assert row["valid_loss"] == pytest.approx(expected, abs=1e-5)
    assert row["error_rate"] == pytest.approx((outs.argmax(1) != targs).float().mean().item())
    path = learn.dls.valid_items[0][0]
    label, probs = learn.predict(path)
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-5) and label in learn.vocab
    learn.save(tmp_path / "m")
    loaded = load_learner(tmp_path / "m")
    assert type(loaded.loss_func) is torch.nn.CrossEntropyLoss  # the file holds no loss
    label2, probs2 = loaded.predict(path)
    assert label2 == label and torch.allclose(probs, probs2, atol=1e-5)


# -- resume ---------------------------------------------------------------------------


class StopAt(Callback):
    def __init__(self, fit_index, epoch, batch):
        self.at = (fit_index, epoch, batch)

    def after_batch(self, learn):
        if (learn.fit_index, learn.epoch, learn.iter) == self.at:
            raise KeyboardInterrupt


@pytest.mark.parametrize("cls", [MixUp, CutMix])
def test_resume_with_mixing_gives_the_uninterrupted_weights(tmp_path, cls):
    import timm

    def learner():
        torch.manual_seed(0)
        model = timm.create_model("test_resnet", num_classes=3, drop_rate=0.3)
        return Learner(fake_dls(n_batches=4), model, precision="fp32", console=quiet(),
                       loss_func=LabelSmoothingCrossEntropy(0.1), cbs=[cls()])  # fmt: skip

    ref = learner()
    ref.fine_tune(2, freeze_epochs=1)
    ckpt = tmp_path / "ckpt.safetensors"
    stopped = learner()
    with pytest.raises(KeyboardInterrupt):
        stopped.fine_tune(
            2, freeze_epochs=1, cbs=[SaveCheckpoint(ckpt, every_batches=1), StopAt(1, 0, 2)]
        )
    torch.manual_seed(123)  # another process's generator: resume restores it
    resumed = learner()
    resumed.fine_tune(2, freeze_epochs=1, resume=ckpt)
    a, b = snapshot(ref.model), snapshot(resumed.model)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    for r1, r2 in zip(ref.recorder.rows, resumed.recorder.rows, strict=True):
        assert r1["train_loss"] == pytest.approx(r2["train_loss"], abs=1e-6)


# -- configuration and command line -------------------------------------------------------


def test_regularisation_from_the_config():
    loss, cbs = regularisation(TrainConfig("", label_smoothing=0.1, cutmix=1.0), SingleLabel())
    assert isinstance(loss, LabelSmoothingCrossEntropy) and loss.eps == 0.1
    assert len(cbs) == 1 and type(cbs[0]) is CutMix and cbs[0].alpha == 1.0
    loss, cbs = regularisation(TrainConfig("", mixup=0.4), MultiLabel())
    assert loss is None and type(cbs[0]) is MixUp and cbs[0].alpha == 0.4
    assert regularisation(TrainConfig(""), SingleLabel()) == (None, [])
    refusals = [
        (TrainConfig("", label_smoothing=0.1), MultiLabel(), "--label-smoothing: for single-label"),
        (TrainConfig("", mixup=0.4), Segmentation(), "--mixup: for classification only"),
        (TrainConfig("", mixup=0.4, cutmix=1.0), SingleLabel(), "--mixup, --cutmix: choose one"),
        (TrainConfig("", label_smoothing=1.0), SingleLabel(), "--label-smoothing: expected"),
        (TrainConfig("", cutmix=-1.0), SingleLabel(), "--cutmix: expected a number >= 0"),
    ]
    for cfg, task, message in refusals:
        with pytest.raises(SnugfitError, match="^" + re.escape(message)):
            regularisation(cfg, task)
    with pytest.raises(SnugfitError, match=r"^--mixup: "):
        check_regularisation(TrainConfig("", mixup=float("inf")))


@pytest.mark.parametrize(
    "arg, value, expected",
    [
        ("--label-smoothing", "1", "argument --label-smoothing: must be a number ≥ 0 and < 1"),
        ("--label-smoothing", "-0.1", "argument --label-smoothing: must be a number ≥ 0 and < 1"),
        ("--mixup", "-1", "argument --mixup: must be a number ≥ 0, got '-1'"),
        ("--cutmix", "x", "argument --cutmix: must be a number ≥ 0, got 'x'"),
    ],
)
def test_bad_flags_are_one_line(image_folder, capsys, arg, value, expected):
    from snugfit.app.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", str(image_folder), arg, value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("snugfit: error: ") and expected in err and err.count("\n") == 1


def test_flags_reach_the_config(image_folder, capsys):
    from snugfit.app.cli import build_parser, main

    args = build_parser().parse_args(
        ["train", "d", "--label-smoothing", "0.1", "--mixup", "0.4", "--cutmix", "0.5"]
    )
    assert (args.label_smoothing, args.mixup, args.cutmix) == (0.1, 0.4, 0.5)
    default = build_parser().parse_args(["train", "d"])
    assert (default.label_smoothing, default.mixup, default.cutmix) == (0.0, 0.0, 0.0)
    code = main(["train", str(image_folder), "--mixup", "0.4", "--cutmix", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == (
        "snugfit: error: --mixup, --cutmix: choose one of them (each mixes every batch)"
    )


@pytest.mark.slow
def test_train_command_with_label_smoothing_and_mixup(image_folder, tmp_path, capsys):
    from snugfit.app.cli import main

    out = tmp_path / "run"
    code = main(["train", str(image_folder), "--arch", "test_efficientnet", "--no-pretrained",
                 "--bs", "8", "--size", "32", "--workers", "0", "--recipe", "fine_tune",
                 "--epochs", "1", "--freeze-epochs", "0", "--label-smoothing", "0.1",
                 "--mixup", "0.4", "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["label_smoothing"], cfg["mixup"], cfg["cutmix"]) == (0.1, 0.4, 0.0)
    assert (out / "model" / "model.safetensors").is_file()
