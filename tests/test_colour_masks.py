"""Colour masks with a class_dict.csv (Kaggle's DeepGlobe Land Cover, CamVid): class i
is painted in row i's colour; read as class indices, predicted back as colours."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures import SEG_CODES, seg_scene
from snugfit import load_learner
from snugfit.data.check_seg import check_segmentation
from snugfit.data.masks import open_mask
from snugfit.data.seg_items import read_class_dict
from snugfit.data.segmentation import SegmentationDataLoaders
from snugfit.errors import SnugfitError
from snugfit.tasks.saved import task_from_config
from test_cli import run_cli
from test_segmentation_cli import TRAIN

FAST = {"num_workers": 0, "device": "cpu", "bs": 4, "cache": False}
HW = (48, 72)
PALETTE = [(0, 255, 255), (255, 255, 0), (255, 0, 255), (0, 255, 0)]  # DeepGlobe's first four


def colour_folder(root: Path, n: int = 8, suffix: str = ".png") -> tuple[Path, dict]:
    """Scenes of the four classes (no void), their masks painted in `PALETTE` and a
    class_dict.csv; returns the folder and each mask's class indices by stem."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    truth = {}
    for i in range(n):
        rgb, labels = seg_scene(rng, *HW, void=False)
        Image.fromarray(rgb).save(root / "images" / f"s{i}.png")
        painted = np.asarray(PALETTE, dtype=np.uint8)[labels]
        Image.fromarray(painted).save(root / "masks" / f"s{i}{suffix}", quality=90)
        truth[f"s{i}"] = labels
    rows = [f"{name},{r},{g},{b}" for name, (r, g, b) in zip(SEG_CODES, PALETTE, strict=True)]
    (root / "class_dict.csv").write_text("name,r,g,b\n" + "\n".join(rows) + "\n")
    return root, truth


def test_colour_masks_are_read_as_the_classes_of_class_dict(tmp_path):
    root, truth = colour_folder(tmp_path / "d")
    report = check_segmentation(root, workers=1)
    assert report.classes == list(SEG_CODES) and report.colours == [list(c) for c in PALETTE]
    assert not report.issues and report.usable == 8 and "class_dict.csv" in report.describe()
    pixels = sum(report.pixels[s][c] for s in ("train", "valid") for c in SEG_CODES[1:])
    assert pixels == sum(int((t > 0).sum()) for t in truth.values())
    for fresh in (SegmentationDataLoaders.from_folder(root, size=HW, **FAST),
                  SegmentationDataLoaders.from_check(report, size=HW, **FAST)):  # fmt: skip
        assert fresh.vocab == list(SEG_CODES) and fresh.c == 4
        ys = torch.cat([y for _, y in fresh.valid])
        expected = np.stack([truth[i.stem] for i, _ in fresh.valid_items])
        assert np.array_equal(ys.numpy(), expected.astype(np.int64))


def test_jpeg_colour_masks_take_the_nearest_colour(tmp_path):
    """A JPEG's chroma bleeds far at edges (16.7% of these small masks lie farther than
    the tolerance): each pixel takes its nearest class colour, however far."""
    root, truth = colour_folder(tmp_path / "d", suffix=".jpg")
    colours = read_class_dict(root / "class_dict.csv")[1]
    values = open_mask(root / "masks" / "s0.jpg", colours)
    assert (values == truth["s0"]).mean() > 0.9 and values.max() < 4
    report = check_segmentation(root, workers=1)
    assert report.usable == 8 and report.thresholded == 0  # colours, not thresholded


def test_a_colour_of_no_class_is_named_and_its_pair_skipped(tmp_path):
    root, _ = colour_folder(tmp_path / "d")
    mask = root / "masks" / "s3.png"
    painted = np.asarray(Image.open(mask)).copy()
    painted[:10, :10] = (12, 34, 200)  # 100 of 3456 pixels: no class's colour
    Image.fromarray(painted).save(mask)
    report = check_segmentation(root, workers=1)
    [problem] = report.issues
    assert problem.kind == "mask format" and problem.path == str(mask)
    assert problem.reason == "colours that are no class's: (12, 34, 200) (2.9% of the pixels)"
    assert report.usable == 7


def test_opaque_rgba_colour_masks_are_read_as_rgb(tmp_path):
    """Annotation tools export colour masks as RGBA: opaque, they are the same masks."""
    root, truth = colour_folder(tmp_path / "d")
    for mask in (root / "masks").iterdir():
        Image.open(mask).convert("RGBA").save(mask)
    report = check_segmentation(root, workers=1)
    assert not report.issues and report.usable == 8
    colours = read_class_dict(root / "class_dict.csv")[1]
    assert np.array_equal(open_mask(root / "masks" / "s2.png", colours), truth["s2"])


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("label,red,green,blue\nsky,0,0,255\n", "needs a header with name, r, g and b columns"),
        ("name,r,g,b\nsky,0,0,256\nsea,0,0,1\n", "line 2: r, g, b must be integers 0-255"),
        ("name,r,g,b\nsky,0,0,255\nsea,0,0,255\n", "line 3: colour (0, 0, 255) repeated"),
        ("name,r,g,b\n,0,0,255\nsea,0,0,1\n", "line 1: empty class name"),
    ],
)
def test_class_dict_problems_are_one_line(tmp_path, text, error):
    root, _ = colour_folder(tmp_path / "d")
    (root / "class_dict.csv").write_text(text)
    with pytest.raises(SnugfitError, match=r"class_dict\.csv") as e:
        check_segmentation(root, workers=1)
    assert error in str(e.value) and "\n" not in str(e.value)


def test_colour_masks_are_never_taken_for_binary_ones(tmp_path):
    """Two colour classes, the masks painted only in the first with a few stray pixels
    (void): values 0 and 255 after reading, which must not make the strays class 1."""
    root, _ = colour_folder(tmp_path / "d")
    (root / "class_dict.csv").write_text("name,r,g,b\nland,0,255,255\nwater,0,0,255\n")
    for mask in (root / "masks").iterdir():
        painted = np.zeros((*HW, 3), np.uint8)
        painted[...] = (0, 255, 255)
        painted[0, :5] = (128, 0, 0)  # 5 stray pixels: void
        Image.fromarray(painted).save(mask)
    report = check_segmentation(root, workers=1)
    assert not report.binary and report.absent == ["water"]
    assert report.pixels["train"]["(void)"] == 5 * len(report.split.train)
    dls = SegmentationDataLoaders.from_check(report, size=HW, **FAST)
    assert not dls.binary and set(torch.cat([y for _, y in dls.valid]).unique().tolist()) == {
        0,
        255,
    }


def test_codes_txt_and_class_dict_together_are_refused(tmp_path):
    root, _ = colour_folder(tmp_path / "d")
    (root / "codes.txt").write_text("a\nb\nc\nd\n")
    with pytest.raises(SnugfitError, match=r"both codes\.txt and class_dict\.csv name the classes"):
        SegmentationDataLoaders.from_folder(root, size=HW, **FAST)


def test_a_colour_model_predicts_colour_masks(tmp_path, capsys):
    root, _ = colour_folder(tmp_path / "d", n=12)
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, "train", str(root), *TRAIN, "--out", str(out))
    assert code == 0, err
    assert "classes from class_dict.csv" in stdout
    meta = json.loads((out / "model" / "snugfit.json").read_text())
    assert meta["colours"] == [list(c) for c in PALETTE]
    masks = tmp_path / "masks"
    code, _, err = run_cli(capsys, "predict", str(out), str(root / "images" / "s0.png"),
                           "--out", str(masks))  # fmt: skip
    assert code == 0, err
    written = np.asarray(Image.open(masks / "s0.png"))
    mask, _ = load_learner(out / "model").predict(root / "images" / "s0.png")
    assert written.shape == (*HW, 3)
    assert np.array_equal(written, np.asarray(PALETTE, dtype=np.uint8)[mask.numpy()])


def test_a_model_file_checks_its_colours():
    cfg = {"task": "segmentation", "vocab": ["a", "b"], "colours": [[0, 0, 0], [255, 0, 0]]}
    assert task_from_config(cfg, "m.json").colours == [(0, 0, 0), (255, 0, 0)]
    for bad in ([[0, 0, 0]], [[0, 0, 0], [256, 0, 0]], [[0, 0], [1, 1]], "red"):
        with pytest.raises(SnugfitError, match=r"m\.json: field 'colours' must be one"):
            task_from_config({**cfg, "colours": bad}, "m.json")
