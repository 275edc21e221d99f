"""Multi-label classification: parsing, metrics, training to F1 >= 0.95, predict, save/load."""

import json
from functools import partial

import numpy as np
import pytest
import torch
from torch import nn

from fixtures import SQUARES, make_image_folder, make_multilabel_csv
from snugfit import ImageDataLoaders, load_learner, vision_learner
from snugfit.app.cli import main
from snugfit.data.items import split_random
from snugfit.errors import SnugfitError
from snugfit.infer.interpret import ClassificationInterpretation
from snugfit.saving.model_files import META_FILE
from snugfit.tasks.metrics import accuracy_multi, f1_samples, metric_name

FAST = {"num_workers": 0, "device": "cpu", "bs": 8, "size": 32}
VOCAB = sorted(SQUARES)  # blue, green, red


def write_csv(root, rows, header="fname,labels"):
    """Images for ``rows`` of ``(file, label cell)`` and a CSV listing them."""
    root.mkdir(parents=True, exist_ok=True)
    make_multilabel_csv(root / "src", n=len(rows))
    for i, (name, _) in enumerate(rows):
        (root / name).write_bytes((root / "src" / f"img_{i:03d}.png").read_bytes())
    lines = [header] + [f"{name},{cell}" for name, cell in rows]
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


# -- metrics, by hand ----------------------------------------------------------

# Logits of 4 samples x 3 classes; sigmoid > 0.5 means logit > 0.
LOGITS = torch.tensor(
    [
        [3.0, -1.0, 2.0],  # predicts {0, 2}
        [-2.0, 1.0, -3.0],  # predicts {1}
        [-1.0, -1.0, -1.0],  # predicts {}
        [-1.0, -1.0, -1.0],  # predicts {}
    ]
)
TARGS = torch.tensor(
    [
        [1.0, 0.0, 0.0],  # true {0}: tp 1, |pred| 2, |true| 1 -> F1 2/3
        [0.0, 1.0, 1.0],  # true {1, 2}: tp 1, 1 + 2 -> F1 2/3
        [0.0, 0.0, 0.0],  # true {}: nothing predicted, nothing true -> zero_division
        [1.0, 0.0, 0.0],  # true {0}: tp 0 -> F1 0
    ]
)


def test_accuracy_multi_by_hand():
    # right decisions: 2 + 2 + 3 + 2 = 9 of 12
    assert accuracy_multi(LOGITS, TARGS).item() == pytest.approx(9 / 12)
    # thresh applies to the probabilities; sigmoid=False compares the raw values
    probs = LOGITS.sigmoid()
    assert accuracy_multi(probs, TARGS, sigmoid=False).item() == pytest.approx(9 / 12)
    # thresh 0.9: only sigmoid(3) = 0.95 is above: sample 0 predicts {0} (3 right),
    # sample 1 predicts {} (1 right): 3 + 1 + 3 + 2
    assert accuracy_multi(LOGITS, TARGS, thresh=0.9).item() == pytest.approx(9 / 12)
    assert accuracy_multi(LOGITS, TARGS, thresh=0.99).item() == pytest.approx(8 / 12)


def test_f1_samples_by_hand():
    assert f1_samples(LOGITS, TARGS).item() == pytest.approx((2 / 3 + 2 / 3 + 1 + 0) / 4)
    both_empty_zero = f1_samples(LOGITS, TARGS, zero_division=0.0).item()
    assert both_empty_zero == pytest.approx((2 / 3 + 2 / 3 + 0 + 0) / 4)
    # thresh 0.9: sample 0 predicts {0} = true {0} -> 1; sample 1 predicts {} -> 0
    assert f1_samples(LOGITS, TARGS, thresh=0.9).item() == pytest.approx((1 + 0 + 1 + 0) / 4)
    perfect = torch.where(TARGS.bool(), 5.0, -5.0)
    assert f1_samples(perfect, TARGS).item() == 1.0
    assert accuracy_multi(perfect, TARGS).item() == 1.0


def test_f1_samples_matches_scikit_learn():
    sklearn = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 5, generator=g) * 2
    targs = (torch.rand(200, 5, generator=g) < 0.3).float()
    targs[:10] = 0  # some samples with no true label (some of them with no prediction)
    logits[:5] = -1
    pred = (logits.sigmoid() > 0.5).numpy()
    for zero_division in (0.0, 1.0):
        expected = sklearn.f1_score(
            targs.numpy(), pred, average="samples", zero_division=zero_division
        )
        got = f1_samples(logits, targs, zero_division=zero_division).item()
        assert got == pytest.approx(expected, abs=1e-6)


def test_metric_names_and_partials():
    assert metric_name(f1_samples) == "f1_samples"
    assert metric_name(partial(accuracy_multi, thresh=0.2)) == "accuracy_multi"


# -- data ------------------------------------------------------------------------


def test_from_csv_parses_label_sets(tmp_path):
    rows = [
        ("a.png", "red green"),
        ("b.png", "  green   red  "),  # extra whitespace, same set
        ("c.png", "blue\tred"),  # a tab is whitespace too
        ("d.png", ""),  # no label: all-zero target
        ("e.png", "red red"),  # repeats count once
        ("f.png", "blue"),
    ]
    root = write_csv(tmp_path / "d", rows)
    dls = ImageDataLoaders.from_csv(root, label_delim=" ", valid_pct=0.5, **FAST)
    assert dls.multi_label and dls.vocab == ["blue", "green", "red"] and dls.c == 3
    labels = {p.name: lab for p, lab in dls.train_items + dls.valid_items}
    assert labels == {
        "a.png": (1, 2),
        "b.png": (1, 2),
        "c.png": (0, 2),
        "d.png": (),
        "e.png": (2,),
        "f.png": (0,),
    }
    assert len(dls.valid_items) == 3 and len(dls.train_items) == 3
    # targets: multi-hot float32 rows, aligned with the items
    ys = torch.cat([y for _, y in dls.valid])
    assert ys.dtype == torch.float32 and ys.shape == (3, 3)
    for (p, lab), y in zip(dls.valid_items, ys, strict=True):
        assert y.nonzero().flatten().tolist() == list(lab), p.name
    x, y = dls.one_batch()
    assert y.shape == (3, 3) and x.shape == (3, 3, 32, 32)
    assert "multi-label" in repr(dls)


def test_from_csv_other_delimiter_and_single_label_default(tmp_path):
    cells = ["red;green", " blue ; ", "green"]
    rows = [(f"{i}.png", cells[i % 3]) for i in range(6)]
    root = write_csv(tmp_path / "d", rows)
    dls = ImageDataLoaders.from_csv(root, label_delim=";", valid_pct=0.4, **FAST)
    labels = {p.name: lab for p, lab in dls.train_items + dls.valid_items}
    assert dls.vocab == ["blue", "green", "red"]
    assert labels == {f"{i}.png": [(1, 2), (0,), (1,)][i % 3] for i in range(6)}
    # without label_delim a cell is one class name, spaces and all: single-label
    single = ImageDataLoaders.from_csv(root, valid_pct=0.4, **FAST)
    assert not single.multi_label
    assert single.vocab == ["blue ;", "green", "red;green"]
    _, y = single.one_batch()
    assert y.dtype == torch.long and y.ndim == 1


def test_from_csv_multi_label_errors(tmp_path):
    root = write_csv(tmp_path / "d", [("a.png", ""), ("b.png", " ")])
    with pytest.raises(SnugfitError, match="no labels found"):
        ImageDataLoaders.from_csv(root, label_delim=" ", valid_pct=0.5, **FAST)
    with pytest.raises(SnugfitError, match="label_delim"):
        ImageDataLoaders.from_csv(root, label_delim="", valid_pct=0.5, **FAST)


def test_one_class_is_enough_for_multi_label(tmp_path):
    rows = [("a.png", "red"), ("b.png", ""), ("c.png", "red"), ("d.png", "")]
    dls = ImageDataLoaders.from_csv(write_csv(tmp_path / "d", rows), label_delim=" ", **FAST)
    assert dls.vocab == ["red"] and dls.c == 1


def test_split_random_is_seeded_and_sized():
    train, valid = split_random(10, 0.2, seed=3)
    assert len(valid) == 2 and sorted(train + valid) == list(range(10))
    assert split_random(10, 0.2, seed=3) == (train, valid)
    assert split_random(10, 0.2, seed=4) != (train, valid)
    assert len(split_random(2, 0.01)[1]) == 1 and len(split_random(2, 0.99)[1]) == 1
    with pytest.raises(SnugfitError, match="valid_pct"):
        split_random(10, 1.0)


def test_from_path_func_lists_and_strings(tmp_path):
    root = make_multilabel_csv(tmp_path / "d", n=12)
    cells = dict(line.split(",") for line in (root / "labels.csv").read_text().splitlines()[1:])
    dls = ImageDataLoaders.from_path_func(root, None, lambda p: cells[p.name].split(), **FAST)
    assert dls.multi_label and dls.vocab == VOCAB
    for p, lab in dls.train_items + dls.valid_items:
        assert [dls.vocab[i] for i in lab] == sorted(cells[p.name].split())
    # a label function returning strings: single-label, as before
    files = [f"img_{i:03d}.png" for i in range(12)]
    parity = ImageDataLoaders.from_path_func(root, files, lambda p: f"c{int(p.stem[-1]) % 2}")
    assert not parity.multi_label and parity.vocab == ["c0", "c1"]
    with pytest.raises(SnugfitError, match="is not a list of class names"):
        ImageDataLoaders.from_lists(root, files[:2], [["red"], "red"], **FAST)
    with pytest.raises(SnugfitError, match="expected 2"):
        ImageDataLoaders.from_lists(root, files[:2], [["red"]], **FAST)


def test_multi_label_items_are_checked(tmp_path):
    root = make_multilabel_csv(tmp_path / "d", n=4)
    files = sorted(root.glob("*.png"))
    with pytest.raises(SnugfitError, match="out of range"):
        ImageDataLoaders([(files[0], (0, 3))], [(files[1], ())], VOCAB, multi_label=True, **FAST)
    with pytest.raises(SnugfitError, match="list of class indices"):
        ImageDataLoaders([(files[0], 1)], [(files[1], ())], VOCAB, multi_label=True, **FAST)


# -- training, prediction, saving ----------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained on the squares (120 images, 24 for validation); no pixel cache."""
    root = make_multilabel_csv(tmp_path_factory.mktemp("multilabel") / "data", n=120)
    torch.manual_seed(0)
    dls = ImageDataLoaders.from_csv(
        root, label_delim=" ", bs=16, size=32, num_workers=0, seed=0, device="cpu", cache=False
    )
    learn = vision_learner(dls, "test_resnet", pretrained=False, precision="fp32")
    learn.fit_one_cycle(6, 1e-2)
    return learn


def test_validate_tta_of_a_multi_label_model(trained):
    # beta=1 is the plain sigmoid outputs: logits of them score as validate() does
    plain = trained.validate()
    same = trained.validate_tta(n=2, beta=1.0)
    for k in plain:
        assert same[k] == pytest.approx(plain[k], abs=1e-4)
    probs, targs = trained.tta(n=2, beta=0.5)
    got = trained.validate_tta(n=2, beta=0.5)
    expected = ((probs > 0.5).float() == targs).float().mean().item()
    assert got["accuracy_multi"] == pytest.approx(expected)


def test_learns_labels_from_pixels(trained):
    assert isinstance(trained.loss_func, nn.BCEWithLogitsLoss)
    assert trained.metric_names == ["accuracy_multi", "f1_samples"]
    last = trained.recorder.rows[-1]
    assert last["f1_samples"] >= 0.95, trained.recorder.rows
    assert last["accuracy_multi"] >= 0.95
    losses = [r["train_loss"] for r in trained.recorder.rows]
    assert losses[-1] < losses[0] / 4
    # the metric over the whole validation set agrees with one computed from get_preds
    preds, targs = trained.get_preds()
    assert targs.shape == (24, 3) and preds.shape == (24, 3)
    assert f1_samples(preds, targs).item() == pytest.approx(last["f1_samples"])


def test_predict_returns_label_lists(trained, tmp_path):
    items = trained.dls.valid_items
    labels, probs = trained.predict_many([p for p, _ in items])
    assert probs.shape == (len(items), 3) and probs.min() >= 0 and probs.max() <= 1
    preds, _ = trained.get_preds()
    assert torch.allclose(probs, preds.sigmoid(), atol=1e-5)
    for labs, row in zip(labels, probs, strict=True):
        assert labs == [c for c, p in zip(VOCAB, row.tolist(), strict=True) if p > 0.5]
    right = sum(
        labs == [VOCAB[i] for i in lab] for labs, (_, lab) in zip(labels, items, strict=True)
    )
    assert right >= len(items) - 1
    none = next(p for p, lab in items if lab == ())  # an image without squares
    label, p = trained.predict(none)
    assert label == [] and p.shape == (3,)
    trained.threshold = 0.0  # every class is above 0
    try:
        assert trained.predict(none)[0] == VOCAB
    finally:
        trained.threshold = 0.5


def test_save_load_keeps_multi_label_and_threshold(trained, tmp_path):
    trained.threshold = 0.3
    try:
        trained.save(tmp_path / "m")
    finally:
        trained.threshold = 0.5
    meta = json.loads((tmp_path / "m" / META_FILE).read_text())
    assert meta["multi_label"] is True and meta["threshold"] == 0.3
    loaded = load_learner(tmp_path / "m")
    assert loaded.multi_label and loaded.threshold == 0.3
    assert isinstance(loaded.loss_func, nn.BCEWithLogitsLoss)
    files = [p for p, _ in trained.dls.valid_items]
    labels, probs = loaded.predict_many(files)
    assert torch.allclose(probs, trained.predict_many(files)[1], atol=1e-6)
    assert labels == [[c for c, p in zip(VOCAB, r, strict=True) if p > 0.3] for r in probs.tolist()]

    bad_fields = [{"multi_label": "yes"}, {"threshold": 2}, {"threshold": None}]
    for bad in bad_fields:
        (tmp_path / "m" / META_FILE).write_text(json.dumps({**meta, **bad}))
        field = next(iter(bad))
        with pytest.raises(SnugfitError, match=f"field '{field}'"):
            load_learner(tmp_path / "m")


def test_cli_predict_prints_labels(trained, tmp_path, capsys):
    """``snugfit predict``: path, the labels joined by spaces, their probabilities."""
    trained.save(tmp_path / "m")
    files = [p for p, _ in trained.dls.valid_items]
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "m"), *map(str, files)]) == 0
    lines = capsys.readouterr().out.splitlines()
    labels, probs = trained.predict_many(files)
    assert len(lines) == len(files)
    for line, f, labs, row in zip(lines, files, labels, probs, strict=True):
        path, names, ps = line.split("\t")
        assert path == str(f) and names == " ".join(labs)
        assert [float(v) for v in ps.split()] == pytest.approx(row[row > 0.5].tolist(), abs=1e-4)


def test_tta_and_interpretation(trained):
    probs, targs = trained.tta(n=2)
    assert probs.shape == targs.shape == (24, 3)
    assert probs.min() >= 0 and probs.max() <= 1
    assert f1_samples(probs, targs, sigmoid=False).item() >= 0.9
    with pytest.raises(SnugfitError, match="multi-label"):
        ClassificationInterpretation.from_learner(trained)


def test_show_batch_titles_label_sets(trained, tmp_path):
    assert trained.dls.task.title([1.0, 0.0, 1.0], trained.dls.vocab) == "blue;red"
    assert trained.dls.task.title([0.0, 0.0, 0.0], trained.dls.vocab) == "(none)"
    assert trained.dls.show_batch(tmp_path / "b.png", n=4).stat().st_size > 0


def test_single_label_metric_names_are_refused(tmp_path):
    root = make_multilabel_csv(tmp_path / "d", n=10)
    dls = ImageDataLoaders.from_csv(root, label_delim=" ", **FAST)
    with pytest.raises(SnugfitError, match="'accuracy' needs single-label data"):
        vision_learner(dls, "test_resnet", pretrained=False, metrics=["accuracy"])


def test_precompute_and_auto_fit(tmp_path):
    root = make_multilabel_csv(tmp_path / "d", n=40)
    torch.manual_seed(0)
    dls = ImageDataLoaders.from_csv(root, label_delim=" ", **FAST)
    learn = vision_learner(dls, "test_resnet", pretrained=False, precision="fp32")
    before = learn.validate()["valid_loss"]
    learn.auto_fit(1, head_epochs=2, head_aug_epochs=1, lr_find=False)  # precompute on
    feats = next(iter(learn._features.values()))
    assert feats[1].shape == (32, 3) and feats[1].dtype == torch.float32  # multi-hot targets
    assert len(learn.recorder.rows) == 4  # 2 head epochs, 1 with augmentation, 1 unfrozen
    assert learn.recipe_state["best_phase"] != "start"
    assert learn.validate()["valid_loss"] < before


# -- single-label stays as it was ---------------------------------------------------------


def test_single_label_is_unchanged(image_folder, tmp_path):
    def fitted(**kw):
        torch.manual_seed(0)
        dls = ImageDataLoaders.from_folder(image_folder, bs=8, size=32, num_workers=0, seed=0)
        learn = vision_learner(dls, "test_efficientnet", pretrained=False, precision="fp32", **kw)
        learn.fit(1, 1e-3)
        return learn

    default = fitted()
    explicit = fitted(loss_func=nn.CrossEntropyLoss(), metrics=["error_rate"])
    assert not default.multi_label and type(default.loss_func) is nn.CrossEntropyLoss
    assert default.metric_names == ["error_rate"]
    after = explicit.model.state_dict()
    for k, a in default.model.state_dict().items():
        assert torch.equal(a, after[k]), k
    assert default.recorder.rows[-1]["train_loss"] == explicit.recorder.rows[-1]["train_loss"]
    _, y = default.dls.one_batch()
    assert y.dtype == torch.long and y.ndim == 1
    label, probs = default.predict(default.dls.valid_items[0][0])
    assert isinstance(label, str) and probs.sum().item() == pytest.approx(1.0)
    default.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / META_FILE).read_text())
    assert meta["multi_label"] is False and "threshold" not in meta
    assert not load_learner(tmp_path / "m").multi_label


def test_colour_fixture_data_stays_single_label(tmp_path):
    root = make_image_folder(tmp_path / "f", classes=("a", "b", "c"), n_train=3, n_valid=2)
    dls = ImageDataLoaders.from_folder(root, **FAST)
    assert not dls.multi_label and np.array_equal(
        dls.train.dataset.labels, [lab for _, lab in dls.train_items]
    )


def test_a_multi_label_head_is_solved_with_sigmoids(tmp_path):
    root = make_multilabel_csv(tmp_path / "data", n=60)
    torch.manual_seed(0)
    dls = ImageDataLoaders.from_csv(root, label_delim=" ", seed=0, cache=False, **FAST)
    learn = vision_learner(dls, "test_resnet", pretrained=False, precision="fp32")
    learn.freeze()  # random weights: freeze by hand, as pretrained models are
    before = learn.validate()
    loss = learn.solve_head()
    after = learn.validate()
    assert 0 < loss < 3 * 0.6931  # below the untrained sum of 3 sigmoid losses
    assert after["valid_loss"] < before["valid_loss"]
    assert before["accuracy_multi"] < 0.5 and after["accuracy_multi"] == 1.0
