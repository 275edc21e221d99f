"""Interpretation (confusion matrix, top losses, report) and test-time augmentation."""

import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fixtures import make_image_folder
from snugfit import ImageDataLoaders, vision_learner
from snugfit.errors import SnugfitError
from snugfit.infer.interpret import ClassificationInterpretation
from test_learner import make_learner

# A fixed prediction set: 7 items, 3 classes; "fox" is never predicted.
VOCAB = ["cat", "dog", "fox"]
PROBS = [
    [0.70, 0.20, 0.10],  # 0 cat -> cat
    [0.20, 0.50, 0.30],  # 1 cat -> dog
    [0.10, 0.80, 0.10],  # 2 dog -> dog
    [0.60, 0.30, 0.10],  # 3 dog -> cat
    [0.30, 0.60, 0.10],  # 4 fox -> dog
    [0.25, 0.40, 0.35],  # 5 fox -> dog
    [0.90, 0.05, 0.05],  # 6 cat -> cat
]
TARGETS = [0, 0, 1, 1, 2, 2, 0]


def fixed():
    return ClassificationInterpretation(torch.tensor(PROBS), torch.tensor(TARGETS), VOCAB)


def test_confusion_matrix_and_most_confused_by_hand():
    interp = fixed()
    assert interp.preds.tolist() == [0, 1, 1, 0, 1, 1, 0]
    # rows actual, columns predicted
    assert interp.confusion_matrix().tolist() == [[2, 1, 0], [1, 1, 0], [0, 2, 0]]
    assert interp.confusion_matrix().dtype == torch.int64
    assert interp.most_confused() == [("fox", "dog", 2), ("cat", "dog", 1), ("dog", "cat", 1)]
    assert interp.most_confused(min_val=2) == [("fox", "dog", 2)]
    assert interp.most_confused(min_val=3) == []
    with pytest.raises(SnugfitError, match="min_val"):
        interp.most_confused(min_val=0)


def test_top_losses_by_hand():
    interp = fixed()
    # cross-entropy = -log(probability of the actual class)
    actual = [0.70, 0.20, 0.80, 0.30, 0.10, 0.35, 0.90]
    assert interp.losses.tolist() == pytest.approx([-math.log(p) for p in actual], rel=1e-6)
    losses, idx = interp.top_losses(3)
    assert idx.tolist() == [4, 1, 3]
    assert losses.tolist() == pytest.approx([-math.log(0.1), -math.log(0.2), -math.log(0.3)])
    losses, idx = interp.top_losses()
    assert idx.tolist() == [4, 1, 3, 5, 0, 2, 6]
    assert losses.tolist() == sorted(losses.tolist(), reverse=True)
    _, idx = interp.top_losses(2, largest=False)
    assert idx.tolist() == [6, 2]
    assert interp.top_losses(100)[1].tolist() == [4, 1, 3, 5, 0, 2, 6]


def test_per_class_report_by_hand_with_a_class_never_predicted():
    r = fixed().per_class_report()
    by_class = {row["class"]: row for row in r["classes"]}
    # cat: 2 of 3 predicted "cat" are cats, 2 of 3 cats found
    assert by_class["cat"] == pytest.approx(
        {"class": "cat", "precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3}
    )
    # dog: 1 of 4 predicted "dog" is a dog, 1 of 2 dogs found; F1 = 2pr/(p+r) = 1/3
    assert by_class["dog"] == pytest.approx(
        {"class": "dog", "precision": 1 / 4, "recall": 1 / 2, "f1": 1 / 3, "support": 2}
    )
    # fox is never predicted: precision 0/0 -> 0, recall 0/2, F1 0
    assert by_class["fox"] == {
        "class": "fox",
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "support": 2,
    }
    assert r["macro"] == pytest.approx(
        {"precision": 11 / 36, "recall": 7 / 18, "f1": 1 / 3, "support": 7}
    )
    # weighted by support 3, 2, 2
    assert r["weighted"] == pytest.approx(
        {"precision": 5 / 14, "recall": 3 / 7, "f1": 8 / 21, "support": 7}
    )
    assert r["accuracy"] == pytest.approx(3 / 7)
    numbers = [v for row in r["classes"] for v in row.values()] + list(r["macro"].values())
    assert all(type(v) in (str, int, float) for v in numbers)  # plain Python, not tensors


def test_report_renders_as_text():
    text = str(fixed())
    for word in ("cat", "dog", "fox", "precision", "macro avg", "weighted avg", "0.3056"):
        assert word in text


def test_constructor_rejects_inconsistent_inputs():
    with pytest.raises(SnugfitError, match="probs: expected shape"):
        ClassificationInterpretation(torch.tensor(PROBS), torch.tensor(TARGETS), ["a", "b"])
    with pytest.raises(SnugfitError, match="targets"):
        ClassificationInterpretation(
            torch.tensor(PROBS), torch.tensor([0, 0, 1, 1, 2, 2, 3]), VOCAB
        )
    with pytest.raises(SnugfitError, match="items"):
        ClassificationInterpretation(torch.tensor(PROBS), torch.tensor(TARGETS), VOCAB, items=[])


def test_plots_need_images():
    with pytest.raises(SnugfitError, match="no images"):
        fixed().plot_top_losses(3)


def png_size(path):
    assert path.stat().st_size > 0
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_plot_confusion_matrix_of_fixed_set(tmp_path):
    interp = fixed()
    fig = interp.plot_confusion_matrix()
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == VOCAB
    assert [t.get_text() for t in ax.get_yticklabels()] == VOCAB
    assert sorted(t.get_text() for t in ax.texts) == sorted("210110020")
    norm = interp.plot_confusion_matrix(normalize=True)
    assert "0.67" in [t.get_text() for t in norm.axes[0].texts]
    w, h = png_size(interp.plot_confusion_matrix(tmp_path / "cm.png"))
    assert 200 <= w <= 3000 and 200 <= h <= 3000


# -- on a tiny trained learner over generated colour images --------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained on two colour classes (8 validation images); no pixel cache."""
    folder = make_image_folder(tmp_path_factory.mktemp("interpret") / "data")
    torch.manual_seed(0)
    dls = ImageDataLoaders.from_folder(folder, bs=8, size=32, num_workers=0, seed=0, cache=False)
    learn = vision_learner(
        dls, "test_efficientnet", pretrained=False, metrics=["accuracy"], precision="fp32"
    )
    learn.fit_one_cycle(2, 1e-2)
    return learn


def test_from_learner_matches_accuracy(trained):
    interp = ClassificationInterpretation.from_learner(trained)
    cm = interp.confusion_matrix()
    n_valid = len(trained.dls.valid_items)
    assert cm.sum() == n_valid == len(interp) == 8
    accuracy = trained.validate()["accuracy"]
    assert cm.diag().sum().item() / n_valid == pytest.approx(accuracy)
    assert interp.per_class_report()["accuracy"] == pytest.approx(accuracy)
    assert interp.vocab == ["green", "red"]
    assert interp.items == [p for p, _ in trained.dls.valid_items]
    outs, targs = trained.get_preds()
    assert torch.allclose(interp.probs, outs.softmax(-1).cpu())
    expected = F.cross_entropy(outs, targs, reduction="none")
    assert torch.allclose(interp.losses, expected, atol=1e-6)


def test_top_loss_plot_of_learner(trained, tmp_path):
    interp = ClassificationInterpretation.from_learner(trained)
    fig = interp.plot_top_losses(4)
    titles = [ax.get_title() for ax in fig.axes]
    assert len(titles) == 4
    _, idx = interp.top_losses(4)
    for title, i in zip(titles, idx.tolist(), strict=True):
        predicted_actual, numbers = title.split("\n")
        actual = interp.vocab[interp.targets[i]]
        assert predicted_actual == f"{interp.vocab[interp.preds[i]]}/{actual}"
        loss, prob = (float(v) for v in numbers.split(" / "))
        assert loss == pytest.approx(interp.losses[i].item(), abs=0.006)
        assert prob == pytest.approx(interp.probs[i, interp.targets[i]].item(), abs=0.006)
    w, h = png_size(interp.plot_top_losses(4, tmp_path / "top.png"))
    assert 200 <= w <= 3000 and 200 <= h <= 3000
    w, h = png_size(interp.plot_confusion_matrix(tmp_path / "cm.png", normalize=True))
    assert 200 <= w <= 3000 and 200 <= h <= 3000


def test_top_losses_from_batches_without_files(tmp_path):
    learn = make_learner()  # fixed random tensors: no files behind them
    interp = ClassificationInterpretation.from_learner(learn)
    assert interp.items is None
    fig = interp.plot_top_losses(3)
    assert all("/" in ax.get_title() for ax in fig.axes) and len(fig.axes) == 3
    assert png_size(interp.plot_top_losses(3, tmp_path / "top.png"))[0] > 0


# -- test-time augmentation ---------------------------------------------------------


def test_tta_is_deterministic_and_normalised(trained):
    probs, targs = trained.tta(n=3)
    again, targs2 = trained.tta(n=3)
    assert torch.equal(probs, again) and torch.equal(targs, targs2)
    assert probs.shape == (8, 2)
    assert torch.allclose(probs.sum(-1), torch.ones(8), atol=1e-6)
    _, plain_targs = trained.get_preds()
    assert torch.equal(targs, plain_targs)
    assert not torch.equal(trained.tta(n=3, seed=1)[0], probs)  # the seed is used


def test_tta_blend_follows_fastai(trained):
    plain = trained.get_preds()[0].softmax(-1)
    # beta weights the plain predictions, as fastai's torch.lerp(aug, plain, beta)
    assert torch.allclose(trained.tta(n=2, beta=1.0)[0], plain, atol=1e-6)
    aug, _ = trained.tta(n=2, beta=None)
    assert torch.allclose(trained.tta(n=2, beta=0.0)[0], aug, atol=1e-6)
    mixed, _ = trained.tta(n=2, beta=0.25)
    assert torch.allclose(mixed, 0.75 * aug + 0.25 * plain, atol=1e-6)
    # the images really were augmented (compared as logs: the tiny model is very sure)
    assert (aug.log() - plain.log()).abs().max() > 0.1


def test_tta_accuracy_not_worse_than_plain(trained):
    plain, targs = trained.get_preds()
    probs, _ = trained.tta(n=4)
    plain_acc = (plain.argmax(-1) == targs).float().mean().item()
    tta_acc = (probs.argmax(-1) == targs).float().mean().item()
    assert tta_acc >= plain_acc - 0.125  # at most one of the 8 images


def test_validate_tta_scores_the_tta_probabilities(trained):
    # beta=1: the plain predictions, so exactly validate()'s loss and metrics
    plain = trained.validate()
    same = trained.validate_tta(n=2, beta=1.0)
    assert same.keys() == plain.keys()
    for k in plain:
        assert same[k] == pytest.approx(plain[k], abs=1e-5)
    # otherwise: the accuracy and the cross-entropy of the averaged probabilities
    probs, targs = trained.tta(n=3, beta=0.25)
    got = trained.validate_tta(n=3, beta=0.25)
    assert got["accuracy"] == pytest.approx((probs.argmax(-1) == targs).float().mean().item())
    nll = -probs[torch.arange(len(targs)), targs].log().mean().item()
    assert got["valid_loss"] == pytest.approx(nll, rel=1e-4)


def test_tta_on_a_loader_of_normalised_batches():
    learn = make_learner()
    probs, targs = learn.tta(n=2)
    assert probs.shape == (8, 3) and torch.equal(targs, learn.dls.valid[0][1])
    assert torch.equal(probs, learn.tta(n=2)[0])
    assert torch.allclose(probs.sum(-1), torch.ones(8), atol=1e-6)
    with pytest.raises(SnugfitError, match="n:"):
        learn.tta(n=0)
    with pytest.raises(SnugfitError, match="beta"):
        learn.tta(beta=1.5)


def test_a_learner_without_data_needs_a_loader():
    learn = make_learner()
    learn.dls = None  # as a learner loaded for prediction
    learn._infer = {"vocab": ["a", "b", "c"], "size": 32, "crop_pct": 0.875,
                    "mean": [0.5] * 3, "std": [0.5] * 3}  # fmt: skip
    with pytest.raises(SnugfitError, match="tta: this learner has no data"):
        learn.tta()
    with pytest.raises(SnugfitError, match="from_learner: this learner has no data"):
        ClassificationInterpretation.from_learner(learn)
    batches = make_learner().dls.valid
    probs, targs = learn.tta(n=2, dl=batches)
    assert probs.shape == (8, 3) and torch.equal(targs, batches[0][1])
    assert ClassificationInterpretation.from_learner(learn, dl=batches).vocab == ["a", "b", "c"]
