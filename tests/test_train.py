"""End to end on generated images: data pipeline + model + loop + save/load."""

import json

import pytest
import torch

from snugfit import ImageDataLoaders, load_learner, vision_learner
from snugfit.errors import SnugfitError
from snugfit.saving.model_files import META_FILE


def colour_learner(folder, arch="test_efficientnet", **kw):
    torch.manual_seed(0)
    dls = ImageDataLoaders.from_folder(folder, bs=8, size=32, num_workers=0, seed=0)
    kw.setdefault("precision", "fp32")  # predictions compared bit for bit
    return vision_learner(dls, arch, pretrained=False, metrics=["accuracy"], **kw)


def test_learns_colour_classes(image_folder):
    learn = colour_learner(image_folder)
    learn.fit_one_cycle(4, 1e-2)
    assert learn.recorder.rows[-1]["accuracy"] == 1.0
    losses = [r["train_loss"] for r in learn.recorder.rows]
    assert losses[-1] < losses[0]


def test_save_load_gives_identical_predictions(image_folder, tmp_path):
    learn = colour_learner(image_folder)
    learn.fit(1, 1e-3)
    files = [p for p, _ in learn.dls.valid_items]
    labels, probs = learn.predict_many(files)
    learn.save(tmp_path / "model")
    meta = json.loads((tmp_path / "model" / META_FILE).read_text())
    assert meta["arch"] == "test_efficientnet" and meta["vocab"] == ["green", "red"]
    assert meta["mean"] == list(learn.dls.mean) and meta["size"] == 32
    loaded = load_learner(tmp_path / "model")
    labels2, probs2 = loaded.predict_many(files)
    assert labels2 == labels
    assert torch.equal(probs2, probs)
    label, p = loaded.predict(files[0])
    # one image alone vs in a batch: same result up to kernel rounding
    assert label == labels[0] and torch.allclose(p, probs[0], atol=1e-6)


def test_predict_matches_validation_outputs(image_folder):
    learn = colour_learner(image_folder)
    learn.fit(1, 1e-3)
    preds, _ = learn.get_preds()
    _, probs = learn.predict_many([p for p, _ in learn.dls.valid_items])
    assert torch.allclose(preds.softmax(-1), probs, atol=1e-5)


def test_load_learner_rejects_bad_metadata(image_folder, tmp_path):
    learn = colour_learner(image_folder)
    learn.save(tmp_path / "m")
    meta_file = tmp_path / "m" / META_FILE
    meta = json.loads(meta_file.read_text())
    meta["size"] = "big"
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(SnugfitError, match="field 'size'"):
        load_learner(tmp_path / "m")
    meta_file.write_text("{not json")
    with pytest.raises(SnugfitError, match="not valid JSON"):
        load_learner(tmp_path / "m")
    meta["size"] = 32
    meta["vocab"] = ["a", "b", "c"]  # three classes, weights for two
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(
        SnugfitError, match=r"lists 3 classes but model\.safetensors has a classifier for 2"
    ):
        load_learner(tmp_path / "m")
    with pytest.raises(SnugfitError, match="not found"):
        load_learner(tmp_path / "nowhere")


def test_vision_learner_uses_the_model_normalisation(image_folder):
    learn = colour_learner(image_folder, arch="test_vit")
    assert learn.dls.mean == tuple(learn.model.pretrained_cfg["mean"])
    xb, _ = learn.dls.one_batch()
    assert xb.shape == (8, 3, 32, 32) and xb.dtype == torch.float32


def test_a_loader_of_the_users_dls_is_read_with_the_models_normalisation(image_folder):
    """``learn.get_preds(dl=dls.valid)`` with the dls given to vision_learner (ImageNet's
    mean and std, the model's are 0.5) gave outputs of wrongly normalised images."""
    dls = ImageDataLoaders.from_folder(
        image_folder, bs=8, size=32, num_workers=0, seed=0, crop_pct=0.95
    )
    learn = vision_learner(dls, "test_vit", pretrained=False)
    theirs, mine = next(iter(dls.valid))[0], next(iter(learn.dls.valid))[0]
    assert not torch.allclose(theirs, mine)  # the two loaders differ in normalisation only
    assert torch.allclose(dls.valid.with_preprocessing(learn.preprocessing).one_batch()[0], mine)
    outs, targs = learn.get_preds(dl=dls.valid)
    expected, expected_targs = learn.get_preds(dl=learn.dls.valid)
    assert torch.allclose(outs, expected, atol=1e-5) and torch.equal(targs, expected_targs)
    loss, metrics = learn.evaluate(dls.valid)
    valid = learn.validate()
    assert loss == pytest.approx(valid["valid_loss"], rel=1e-5)
    assert metrics["error_rate"] == pytest.approx(valid["error_rate"])
    assert dls.mean != (0.5, 0.5, 0.5)  # the user's loaders are left as they are


def test_vision_learner_leaves_the_users_loaders_as_they_are(image_folder, tmp_path):
    dls = ImageDataLoaders.from_folder(image_folder, bs=8, size=32, num_workers=0, seed=0)
    before = dls.preprocessing
    learn = vision_learner(dls, "test_vit", pretrained=False)
    # the learner's loaders carry the model's preprocessing; the user's keep theirs
    assert dls.preprocessing == before and dls.mean != (0.5, 0.5, 0.5)
    assert learn.dls is not dls and learn.dls.mean == (0.5, 0.5, 0.5)
    assert learn.preprocessing == before.replace(mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=0.95)
    assert learn.dls.train_items == dls.train_items and learn.dls.skipped is dls.skipped
    # the preprocessing travels with the saved model
    loaded = load_learner(learn.save(tmp_path / "m"))
    assert loaded.preprocessing == learn.preprocessing.replace(presize=None)
