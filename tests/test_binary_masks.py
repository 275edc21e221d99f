"""Binary masks that mark the object with 255 (as most tools save them): read as
classes 0 and 1, never as background and void."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures import make_segmentation_folder
from snugfit import load_learner
from snugfit.data.check_seg import check_segmentation
from snugfit.data.masks import open_mask
from snugfit.data.segmentation import SegmentationDataLoaders
from snugfit.errors import SnugfitError
from snugfit.tasks.saved import task_from_config
from test_cli import run_cli
from test_segmentation_cli import TRAIN

FAST = {"num_workers": 0, "device": "cpu", "bs": 4, "cache": False}
HW = (48, 72)


def binary_folder(root: Path, codes=None) -> Path:
    """The fixture's scenes with each mask rewritten as 0 (background) and 255 (any
    object); returns ``root``."""
    make_segmentation_folder(root, n=8, sizes=(HW,), codes=codes)
    for mask in sorted((root / "masks").iterdir()):
        values = open_mask(mask)
        Image.fromarray(np.where(values > 0, 255, 0).astype(np.uint8)).save(mask)
    return root


def objects(root: Path, split) -> int:
    """Pixels of 255 per split, counted in the files."""
    return sum(int((open_mask(m) == 255).sum()) for _, m in split)


def test_the_check_reads_255_as_class_1(tmp_path):
    root = binary_folder(tmp_path / "d")
    report = check_segmentation(root, workers=1)
    assert report.binary and report.classes == ["class_0", "class_1"]
    assert not report.issues and report.usable == 8
    assert report.pixels["train"]["class_1"] == objects(root, report.split.train) > 0
    assert report.pixels["train"]["(void)"] == 0 and report.pixels["valid"]["(void)"] == 0
    assert "binary masks: only 0 and 255, 255 read as class 1, not void" in report.describe()
    data = report.to_dict()
    assert data["binary"] is True


@pytest.mark.parametrize("codes", [None, ("ground", "roof")])
def test_loaders_train_on_classes_0_and_1(tmp_path, codes):
    root = binary_folder(tmp_path / "d", codes=codes)
    dls = SegmentationDataLoaders.from_folder(root, size=HW, crop=32, **FAST)
    assert dls.binary and dls.c == 2
    assert dls.vocab == (list(codes) if codes else ["class_0", "class_1"])
    ys = torch.cat([y for _, y in dls.valid])  # whole images at their own size
    masks = np.stack([open_mask(m) for _, m in dls.valid_items])
    assert np.array_equal(ys.numpy(), (masks == 255).astype(np.int64))
    _, y = next(iter(dls.train))
    assert set(y.unique().tolist()) == {0, 1}
    # the check's loaders read them the same way
    checked = SegmentationDataLoaders.from_check(
        check_segmentation(root, workers=1), size=HW, **FAST
    )
    assert checked.binary and torch.equal(torch.cat([y for _, y in checked.valid]), ys)


def test_255_stays_void_where_other_classes_are_used(tmp_path):
    """Masks with classes 0, 1, 2 and some void, or 0/255 masks with three codes: 255 is
    void, as before."""
    root = make_segmentation_folder(tmp_path / "multi", n=8, sizes=(HW,), codes=None)
    mask = root / "masks" / "scene_00.png"
    values = open_mask(mask)
    values[:2] = 255
    Image.fromarray(values).save(mask)
    report = check_segmentation(root, workers=1)
    assert (
        not report.binary
        and report.pixels["train"]["(void)"] + report.pixels["valid"]["(void)"] > 0
    )
    three = binary_folder(tmp_path / "three", codes=("a", "b", "c"))
    report = check_segmentation(three, workers=1)
    assert not report.binary and report.absent == ["b", "c"]
    dls = SegmentationDataLoaders.from_folder(three, size=HW, **FAST)
    assert not dls.binary
    with pytest.raises(SnugfitError, match="binary: binary masks have two classes, got 3"):
        SegmentationDataLoaders.from_folder(three, size=HW, binary=True, **FAST)


def test_train_on_a_binary_folder_from_the_command_line(tmp_path, capsys):
    root = binary_folder(tmp_path / "d")
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, "train", str(root), *TRAIN, "--out", str(out))
    assert code == 0, err
    assert "binary masks: only 0 and 255, 255 read as class 1" in stdout
    assert "2 classes (segmentation)" in stdout
    meta = json.loads((out / "model" / "snugfit.json").read_text())
    assert meta["binary"] is True and meta["vocab"] == ["class_0", "class_1"]
    # predicted masks come back as the training masks were: 0 and 255
    masks = tmp_path / "masks"
    code, _, err = run_cli(capsys, "predict", str(out), str(root / "images"), "--out", str(masks))
    assert code == 0, err
    written = [np.asarray(Image.open(m)) for m in sorted(masks.glob("*.png"))]
    assert len(written) == 8 and {v for w in written for v in np.unique(w).tolist()} <= {0, 255}
    learn = load_learner(out / "model")
    mask, _ = learn.predict(root / "images" / "scene_00.png")
    assert np.array_equal(written[0], mask.numpy().astype(np.uint8) * 255)


def test_a_model_file_says_binary_only_with_two_classes():
    cfg = {"task": "segmentation", "vocab": ["a", "b"], "binary": True}
    assert task_from_config(cfg, "m.json").binary
    assert not task_from_config({**cfg, "binary": False}, "m.json").binary
    assert "binary" not in task_from_config({**cfg, "binary": False}, "m.json").config()
    for bad in ({**cfg, "vocab": ["a", "b", "c"]}, {**cfg, "binary": "yes"}):
        with pytest.raises(SnugfitError, match=r"m\.json: field 'binary' must be true"):
            task_from_config(bad, "m.json")


def test_jpeg_masks_are_read_as_binary_masks_thresholded_halfway(tmp_path, caplog):
    """Kvasir-SEG's layout: images/*.jpg and masks/*.jpg, the masks RGB JPEGs of 0 and
    255 blended at every edge. Each is thresholded at 128: 255 (class 1) and 0."""
    root = binary_folder(tmp_path / "d")
    truth = {}
    for mask in sorted((root / "masks").glob("*.png")):
        values = open_mask(mask)
        Image.fromarray(values).convert("RGB").save(mask.with_suffix(".jpg"), quality=75)
        mask.unlink()
        truth[mask.stem] = values == 255
    raw = np.asarray(Image.open(root / "masks" / "scene_00.jpg").convert("L"))
    assert len(np.unique(raw)) > 2  # the compression blended the edges
    read = open_mask(root / "masks" / "scene_00.jpg")
    assert set(np.unique(read).tolist()) == {0, 255}
    assert np.array_equal(read == 255, raw >= 128)
    assert (read == 255).mean() == pytest.approx(truth["scene_00"].mean(), abs=0.02)
    report = check_segmentation(root, workers=1)
    assert report.binary and report.thresholded == 8 and report.usable == 8
    assert "8 JPEG mask(s) read as binary, grey >= 128" in report.describe()
    with caplog.at_level("INFO", logger="snugfit"):
        dls = SegmentationDataLoaders.from_folder(root, size=HW, crop=32, **FAST)
    assert "8 JPEG mask(s) read as binary masks (grey >= 128)" in caplog.text
    assert dls.binary and dls.c == 2
    ys = torch.cat([y for _, y in dls.valid])
    expected = np.stack([open_mask(m) == 255 for _, m in dls.valid_items])
    assert np.array_equal(ys.numpy(), expected.astype(np.int64))
