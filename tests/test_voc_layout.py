"""PASCAL VOC's layout (JPEGImages/, SegmentationClass/, ImageSets/Segmentation/val.txt),
which CVAT and datumaro export with a labelmap.txt. Before, such a folder was read as a
classifier of two classes, 'JPEGImages' and 'SegmentationClass'."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures import SEG_CODES, seg_scene
from snugfit.data.check_seg import check_segmentation
from snugfit.data.masks import open_mask
from snugfit.data.seg_items import read_labelmap
from snugfit.data.seg_layouts import is_segmentation_folder
from snugfit.data.segmentation import SegmentationDataLoaders
from snugfit.errors import SnugfitError

FAST = {"num_workers": 0, "device": "cpu", "bs": 4, "cache": False}
HW = (48, 72)
VOC_PALETTE = [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0)]  # VOC's first four
VOC_VOID = (224, 224, 192)
VAL = ["2007_000005", "2007_000006"]


def voc_folder(root: Path, n: int = 8, colour: bool = False, border: bool = False) -> dict:
    """A VOC folder of ``n`` scenes with masks, two more images without one (VOC's
    detection images) and val.txt naming `VAL`; masks as palette PNGs (the index the
    class, with a void border when ``border``), or RGB painted in `VOC_PALETTE`
    (CVAT's export, ``colour``). Returns each mask's classes by name."""
    rng = np.random.default_rng(0)
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    truth = {}
    for i in range(n + 2):
        name = f"2007_{i:06d}"
        rgb, labels = seg_scene(rng, *HW, void=False)
        Image.fromarray(rgb).save(root / "JPEGImages" / f"{name}.jpg", quality=95)
        if i >= n:
            continue
        if border:
            labels[:, :3] = 255
        if colour:
            mask = Image.fromarray(np.asarray(VOC_PALETTE, np.uint8)[labels])
        else:
            mask = Image.fromarray(labels, "P")
            flat = [v for rgb_ in VOC_PALETTE for v in rgb_] + [0] * 3 * (255 - len(VOC_PALETTE))
            mask.putpalette(flat + list(VOC_VOID))
        mask.save(root / "SegmentationClass" / f"{name}.png")
        truth[name] = labels
    sets = root / "ImageSets" / "Segmentation"
    (sets / "val.txt").write_text("\n".join(VAL) + "\n")
    (sets / "train.txt").write_text("\n".join(t for t in truth if t not in VAL) + "\n")
    return truth


def labelmap(root: Path) -> None:
    lines = [f"{n}:{r},{g},{b}::" for n, (r, g, b) in zip(SEG_CODES, VOC_PALETTE, strict=True)]
    (root / "labelmap.txt").write_text("# label:color_rgb:parts:actions\n" + "\n".join(lines))


def test_a_voc_folder_is_a_segmentation_folder_split_by_val_txt(tmp_path):
    truth = voc_folder(tmp_path / "voc")
    root = tmp_path / "voc"
    assert is_segmentation_folder(root)
    report = check_segmentation(root, workers=1)
    assert report.classes == ["class_0", "class_1", "class_2", "class_3"]
    assert report.usable == 8 and report.images == {"train": 6, "valid": 2}
    assert sorted(Path(p.path).name for p in report.missing) == [
        "2007_000008.jpg",
        "2007_000009.jpg",
    ]
    assert report.layout == "ImageSets/Segmentation/val.txt"
    assert report.describe().startswith(
        "segmentation: PASCAL VOC's JPEGImages/ and SegmentationClass/, classes numbered"
    )
    assert "validation images listed in ImageSets/Segmentation/val.txt" in report.describe()
    dls = SegmentationDataLoaders.from_folder(root, size=HW, **FAST)
    assert [image.stem for image, _ in dls.valid_items] == VAL
    ys = torch.cat([y for _, y in dls.valid])
    assert np.array_equal(ys.numpy(), np.stack([truth[n] for n in VAL]).astype(np.int64))


def test_cvat_colour_masks_take_labelmap_names_and_colours(tmp_path):
    root = tmp_path / "voc"
    truth = voc_folder(root, colour=True)
    labelmap(root)
    assert read_labelmap(root / "labelmap.txt") == (list(SEG_CODES), VOC_PALETTE)
    report = check_segmentation(root, workers=1)
    assert report.classes == list(SEG_CODES) and report.colours == [list(c) for c in VOC_PALETTE]
    assert report.usable == 8 and "classes from labelmap.txt" in report.describe()
    dls = SegmentationDataLoaders.from_check(report, size=HW, **FAST)
    assert dls.vocab == list(SEG_CODES)
    ys = torch.cat([y for _, y in dls.valid])
    assert np.array_equal(ys.numpy(), np.stack([truth[n] for n in VAL]).astype(np.int64))


def test_a_palette_masks_index_255_stays_void_with_a_labelmap(tmp_path):
    """VOC marks object borders with index 255, painted (224, 224, 192): no class's
    colour, but void, not a stray colour that refuses the mask (here 6% of its pixels)."""
    root = tmp_path / "voc"
    truth = voc_folder(root, border=True)
    labelmap(root)
    colours = read_labelmap(root / "labelmap.txt")[1]
    values = open_mask(root / "SegmentationClass" / "2007_000001.png", colours)
    assert np.array_equal(values, truth["2007_000001"]) and (values[:, :3] == 255).all()
    report = check_segmentation(root, workers=1)
    assert report.usable == 8 and not report.unreadable and report.pixels["train"]["(void)"] > 0


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("background:0,0,0::\nsky::\n", "line 2: expected name:r,g,b:parts:actions"),
        ("background:0,0,0::\nsky:0,0,0::\n", "line 2: colour (0, 0, 0) repeated"),
        ("background:0,0,0::\nsky:0,0,300::\n", "line 2: r, g, b must be integers 0-255"),
    ],
)
def test_labelmap_problems_are_one_line(tmp_path, text, error):
    root = tmp_path / "voc"
    voc_folder(root, n=4)
    (root / "labelmap.txt").write_text(text)
    with pytest.raises(SnugfitError, match=r"labelmap\.txt") as e:
        check_segmentation(root, workers=1)
    assert error in str(e.value) and "\n" not in str(e.value)


def test_two_files_naming_the_classes_are_refused(tmp_path):
    root = tmp_path / "voc"
    voc_folder(root, n=4)
    labelmap(root)
    (root / "codes.txt").write_text("\n".join(SEG_CODES))
    with pytest.raises(SnugfitError, match=r"both codes\.txt and labelmap\.txt name the classes"):
        SegmentationDataLoaders.from_folder(root, size=HW, **FAST)


def test_voc_with_sbd_masks_is_read_from_segmentation_class_aug(tmp_path):
    root = tmp_path / "voc"
    truth = voc_folder(root)
    (root / "SegmentationClass").rename(root / "SegmentationClassAug")
    report = check_segmentation(root, workers=1)
    assert report.usable == 8 and report.folders.endswith("SegmentationClassAug/")
    dls = SegmentationDataLoaders.from_check(report, size=HW, **FAST)
    ys = torch.cat([y for _, y in dls.valid])
    assert np.array_equal(ys.numpy(), np.stack([truth[n] for n in VAL]).astype(np.int64))
