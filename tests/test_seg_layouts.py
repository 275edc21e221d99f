"""Segmentation datasets as they are downloaded: the folders of images and masks
found from the files (Carvana, ISIC 2018, fastai's CamVid), and class folders that
only look like them left to classification."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fixtures import SEG_CODES, make_image_folder, make_segmentation_folder
from snugfit.data.check_seg import check_segmentation
from snugfit.data.seg_layouts import PLAIN, detected, folders_of, is_segmentation_folder
from snugfit.data.segmentation import SegmentationDataLoaders
from test_cli import run_cli

FAST = dict(bs=2, num_workers=0, cache=False)


def _renamed(root: Path, images: str, masks: str, suffix: str, ext: str = ".png") -> Path:
    """The fixture's images/ and masks/ renamed, each mask ``<image><suffix><ext>``."""
    (root / "images").rename(root / images)
    (root / "masks").rename(root / masks)
    for m in sorted((root / masks).iterdir()):
        with Image.open(m) as img:
            img.load()
        m.unlink()
        if ext == ".gif":  # a palette whose index is the class, as Carvana's (no reordering)
            img = img.convert("P")
        img.save(root / masks / f"{m.stem}{suffix}{ext}", optimize=False)
    return root


def test_carvana_train_and_train_masks_with_a_suffix(tmp_path):
    root = _renamed(make_segmentation_folder(tmp_path / "carvana", n=8), "train",
                    "train_masks", "_mask", ".gif")  # fmt: skip
    (root / "test").mkdir()  # unlabelled images beside them
    Image.new("RGB", (40, 30)).save(root / "test" / "x.jpg")
    folders = folders_of(root)
    assert folders is not None and (folders.images, folders.masks, folders.mask_suffix) == (
        "train", "train_masks", "_mask",
    )  # fmt: skip
    assert folders.title == "train/ and train_masks/ (a mask named as its image plus '_mask')"
    dls = SegmentationDataLoaders.from_folder(root, size=32, **FAST)
    pairs = dls.train_items + dls.valid_items
    assert len(pairs) == 8
    assert all(m.name == f"{i.stem}_mask.gif" for i, m in pairs)
    report = check_segmentation(root, workers=1)
    assert report.folders == folders.title and report.usable == 8
    assert report.unlabelled_folders == {"test": 1}
    assert report.describe().endswith(
        "; not read, without masks: test/ with 1 images (snugfit predict segments them)"
    )


def test_isic_input_and_groundtruth(tmp_path):
    root = _renamed(make_segmentation_folder(tmp_path / "isic", n=6),
                    "ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth",
                    "_segmentation")  # fmt: skip
    (root / "ISIC2018_Task1-2_Training_Input" / "LICENSE.txt").write_text("CC-BY-NC")
    folders = folders_of(root)
    assert folders.images == "ISIC2018_Task1-2_Training_Input"
    assert folders.mask_suffix == "_segmentation"
    report = check_segmentation(root, workers=1)
    assert report.usable == 6
    assert [p.kind for p in report.issues] == ["not image"]  # LICENSE.txt, listed


def test_camvid_images_and_labels_with_codes(tmp_path, capsys):
    root = _renamed(make_segmentation_folder(tmp_path / "camvid", n=6, codes=SEG_CODES),
                    "images", "labels", "_P")  # fmt: skip
    folders = folders_of(root)
    assert (folders.images, folders.masks, folders.mask_suffix) == ("images", "labels", "_P")
    assert is_segmentation_folder(root)
    code, out, _ = run_cli(capsys, "check", str(root))
    assert code == 0 and "images/ and labels/ (a mask named as its image plus '_P')" in out


def test_a_mask_without_its_image_and_an_image_without_its_mask_are_named(tmp_path):
    root = _renamed(make_segmentation_folder(tmp_path / "c", n=6), "train", "train_masks",
                    "_mask")  # fmt: skip
    (root / "train_masks" / "scene_05_mask.png").unlink()
    report = check_segmentation(root, workers=1)
    [no_mask] = [p for p in report.issues if p.kind == "no mask"]
    assert no_mask.reason == f"no mask ({root / 'train_masks' / 'scene_05_mask.png'} not found)"


def test_the_named_layout_comes_first(tmp_path):
    root = make_segmentation_folder(tmp_path / "plain", n=4)
    _renamed(make_segmentation_folder(tmp_path / "other", n=4), "x", "x_masks", "_mask")
    assert folders_of(root) == PLAIN


def test_class_folders_that_look_like_masks_stay_classes(tmp_path):
    # Kaggle's face-mask classes with numbered photos of one size: RGB, no mask mode
    root = tmp_path / "faces"
    rng = np.random.default_rng(0)
    for cls in ("with_mask", "without_mask"):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    assert detected(root) is None and not is_segmentation_folder(root)
    assert not is_segmentation_folder(make_image_folder(tmp_path / "photos"))


def test_masks_of_another_size_are_not_a_layout(tmp_path):
    root = _renamed(make_segmentation_folder(tmp_path / "c", n=4), "train", "train_masks",
                    "_mask")  # fmt: skip
    for m in (root / "train_masks").iterdir():
        Image.new("L", (7, 5)).save(m)
    assert detected(root) is None


def test_deepglobe_one_folder_of_sat_and_mask_files_with_colours(tmp_path):
    """DeepGlobe's land cover as downloaded: train/<id>_sat.jpg and train/<id>_mask.png
    (colour masks, class_dict.csv), valid/ and test/ of images only."""
    from test_colour_masks import colour_folder

    root, truth = colour_folder(tmp_path / "deepglobe")
    (root / "train").mkdir()
    for image in sorted((root / "images").iterdir()):
        image.rename(root / "train" / f"{image.stem}_sat.png")
    for mask in sorted((root / "masks").iterdir()):
        mask.rename(root / "train" / f"{mask.stem}_mask.png")
    (root / "images").rmdir()
    (root / "masks").rmdir()
    (root / "valid").mkdir()
    Image.new("RGB", (72, 48)).save(root / "valid" / "99_sat.png")
    folders = folders_of(root)
    assert folders is not None and (folders.images, folders.masks) == ("train", "train")
    assert (folders.image_suffix, folders.mask_suffix) == ("_sat", "_mask")
    assert folders.title == "train/ (images <name>_sat, masks <name>_mask)"
    report = check_segmentation(root, workers=1)
    assert report.usable == 8 and not report.issues and report.classes == list(SEG_CODES)
    dls = SegmentationDataLoaders.from_folder(root, size=(48, 72), **FAST)
    pairs = dls.train_items + dls.valid_items
    assert sorted((i.name, m.name) for i, m in pairs) == [
        (f"s{k}_sat.png", f"s{k}_mask.png") for k in range(8)
    ]
    ys = torch.cat([y for _, y in dls.valid])
    expected = np.stack([truth[i.stem.removesuffix("_sat")] for i, _ in dls.valid_items])
    assert np.array_equal(ys.numpy(), expected.astype(np.int64))


def test_one_folder_with_an_image_and_its_mask_of_the_same_stem(tmp_path):
    root = make_segmentation_folder(tmp_path / "kvasir", n=6)
    (root / "data").mkdir()
    for image in (root / "images").iterdir():
        image.rename(root / "data" / image.name.replace(".png", ".jpg"))
    for mask in (root / "masks").iterdir():
        mask.rename(root / "data" / f"{mask.stem}_mask.png")
    (root / "images").rmdir()
    (root / "masks").rmdir()
    folders = folders_of(root)
    assert (folders.images, folders.image_suffix, folders.mask_suffix) == ("data", "", "_mask")
    report = check_segmentation(root, workers=1)
    assert report.usable == 6 and [p.kind for p in report.issues] == []


def test_a_class_folder_of_photos_is_not_walked_for_masks(tmp_path, monkeypatch):
    import snugfit.data.seg_layouts as layouts

    root = make_image_folder(tmp_path / "photos")
    walked = []
    monkeypatch.setattr(layouts, "walk_images", lambda d: walked.append(d))
    assert layouts.detected(root) is None and walked == []


def test_folders_of_more_masks_beside_are_not_unlabelled_images(tmp_path, caplog):
    import logging

    root = make_segmentation_folder(tmp_path / "voc_like", n=4)
    (root / "SegmentationObject").mkdir()  # VOC's instance masks: not images to predict
    Image.new("L", (8, 8)).save(root / "SegmentationObject" / "scene_00.png")
    (root / "test").mkdir()
    Image.new("RGB", (8, 8)).save(root / "test" / "a.jpg")
    Image.new("RGB", (8, 8)).save(root / "test" / "b.jpg")
    assert check_segmentation(root, workers=1).unlabelled_folders == {"test": 2}
    with caplog.at_level(logging.INFO, logger="snugfit"):
        SegmentationDataLoaders.from_folder(root, size=32, **FAST)
    assert f"{root / 'test'}: 2 images without masks, not read (snugfit predict segments them)" in [
        r.getMessage() for r in caplog.records
    ]


def _ade20k(tmp_path: Path, test_masks: bool = False) -> Path:
    """ADE20K's layout: images/training, images/validation, annotations/ the same,
    and an images/testing of images without annotations."""
    root = _renamed(make_segmentation_folder(tmp_path / "ade", n=10), "images", "annotations", "")
    for folder in ("images", "annotations"):
        for sub in ("training", "validation", "testing"):
            (root / folder / sub).mkdir()
        for i, f in enumerate(sorted(p for p in (root / folder).iterdir() if p.is_file())):
            sub = "training" if i < 6 else "validation" if i < 8 else "testing"
            if folder == "annotations" and sub == "testing" and not test_masks:
                f.unlink()
            else:
                f.rename(root / folder / sub / f.name)
    return root


def test_split_folders_give_the_validation_set(tmp_path, caplog):
    import logging

    root = _ade20k(tmp_path)
    with caplog.at_level(logging.INFO, logger="snugfit"):
        dls = SegmentationDataLoaders.from_folder(root, size=32, **FAST)
    assert sorted(i.parent.name for i, _ in dls.valid_items) == ["validation"] * 2
    assert sorted(i.parent.name for i, _ in dls.train_items) == ["training"] * 6
    report = check_segmentation(root, workers=1)
    assert report.layout == "images/validation/" and report.valid_pct is None
    assert [p.kind for p in report.issues] == []  # testing/ has no masks: expected
    assert report.unlabelled_folders == {"images/testing": 2}
    assert report.describe().endswith(
        "; validation images in images/validation/; not read, without masks: "
        "images/testing/ with 2 images (snugfit predict segments them)"
    )
    messages = [r.getMessage() for r in caplog.records]
    assert any("images/testing: 2 images without masks, not read" in m for m in messages)


def test_a_test_folder_with_masks_is_held_out(tmp_path):
    root = _ade20k(tmp_path, test_masks=True)
    report = check_segmentation(root, workers=1)
    assert report.held_out_folders == {"images/testing": 2}
    assert report.usable == 8  # 6 training + 2 validation pairs
    assert "; not read: images/testing/ with 2 pairs (a test split)" in report.describe()
    forced = SegmentationDataLoaders.from_folder(root, size=32, valid_pct=0.25, **FAST)
    assert len(forced.train_items) + len(forced.valid_items) == 10  # valid_pct: all, at random


def _patients(root: Path, split_folders: bool = False) -> Path:
    """Kaggle's brain MRI layout: a folder per patient, each holding <case>_<n>.tif and
    <case>_<n>_mask.tif (or train/ and val/ folders of such pairs)."""
    src = make_segmentation_folder(root.parent / f"{root.name}_src", n=9)
    images = sorted((src / "images").iterdir())
    for k, image in enumerate(images):
        patient = f"TCGA_CS_{k // 3}"
        folder = root / (("train" if k < 6 else "val") if split_folders else patient)
        folder.mkdir(parents=True, exist_ok=True)
        image.rename(folder / f"{patient}_{k}.tif")
        (src / "masks" / f"{image.stem}.png").rename(folder / f"{patient}_{k}_mask.tif")
    return root


def test_a_folder_of_both_per_patient_reads_the_whole_data_folder(tmp_path):
    root = _patients(tmp_path / "kaggle_3m")
    folders = folders_of(root)
    assert (folders.images, folders.masks, folders.mask_suffix) == (".", ".", "_mask")
    assert folders.title == "its folders (images <name>, masks <name>_mask)"
    report = check_segmentation(root, workers=1)
    assert report.usable == 9 and report.issues == [] and report.unlabelled_folders == {}
    dls = SegmentationDataLoaders.from_folder(root, size=32, **FAST)
    assert len(dls.train_items) + len(dls.valid_items) == 9


def test_train_and_val_folders_of_both_split_by_them(tmp_path):
    root = _patients(tmp_path / "data", split_folders=True)
    report = check_segmentation(root, workers=1)
    assert report.layout == "val/" and report.images == {"train": 6, "valid": 3}
    assert "; validation images in val/" in report.describe()


def _pets(tmp_path: Path) -> Path:
    """The Oxford pets: images/<Breed>_<n>.jpg, annotations/trimaps/<Breed>_<n>.png
    (values 1-3), annotations/xmls/."""
    root = _renamed(make_segmentation_folder(tmp_path / "pets", n=6), "images", "trimaps", "")
    (root / "annotations").mkdir()
    (root / "trimaps").rename(root / "annotations" / "trimaps")
    (root / "annotations" / "xmls").mkdir()
    (root / "annotations" / "list.txt").write_text("# Image CLASS-ID SPECIES BREED ID\n")
    return root


def test_masks_named_on_the_command_line_for_a_layout_not_found(tmp_path, capsys):
    root = _pets(tmp_path)
    assert folders_of(root) is None  # nested one level: not found alone
    code, out, _ = run_cli(capsys, "check", str(root), "--masks", "annotations/trimaps")
    assert code == 0 and "segmentation: images/ and annotations/trimaps/ (given)" in out
    dls = SegmentationDataLoaders.from_folder(root, size=32, masks="annotations/trimaps", **FAST)
    assert len(dls.train_items) + len(dls.valid_items) == 6


def test_named_folders_find_the_suffixes(tmp_path):
    from snugfit.data.seg_layouts import given

    root = _renamed(make_segmentation_folder(tmp_path / "c", n=4), "pics", "gt", "_label")
    folders = given(root, "pics", "gt")
    assert (folders.images, folders.masks, folders.mask_suffix) == ("pics", "gt", "_label")
    assert folders.title == "pics/ and gt/ (given; a mask named as its image plus '_label')"
    assert check_segmentation(root, images="pics", masks="gt", workers=1).usable == 4


def test_named_folders_that_do_not_exist_are_one_line(tmp_path, capsys):
    root = _pets(tmp_path)
    code, _, err = run_cli(capsys, "check", str(root), "--masks", "annotations/trimap")
    assert code == 2 and err.strip() == (
        f"snugfit: error: {root / 'annotations' / 'trimap'}: no such directory (--masks)"
    )
    code, _, err = run_cli(capsys, "check", str(root), "--images", "images")
    assert code == 2 and err.strip() == (
        "snugfit: error: --images: give the masks' folder too (--masks)"
    )
    code, _, err = run_cli(capsys, "check", str(root), "--csv", "x.csv", "--masks", "m")
    assert code == 2 and "--masks: not for a CSV" in err


def test_lr_find_and_plan_take_the_masks_folder(tmp_path, capsys):
    """lr-find reads the data as train does (the check, then its split), so --masks
    names the pets' trimaps there too; plan counts the classes from them."""
    root = _pets(tmp_path)
    plot = tmp_path / "lr.png"
    code, out, err = run_cli(
        capsys, "lr-find", str(root), "--masks", "annotations/trimaps", "--arch",
        "test_efficientnet", "--no-pretrained", "--bs", "2", "--size", "32", "--workers", "0",
        "--num-it", "6", "--plot", str(plot), "--precision", "fp32",
    )  # fmt: skip
    assert code == 0, err
    assert "segmentation: images/ and annotations/trimaps/ (given)" in err  # the check's line
    lines = dict(line.split("\t") for line in out.strip().splitlines() if "\t" in line)
    assert float(lines["suggested"]) > 0 and plot.read_bytes()[:4] == b"\x89PNG"
    from snugfit.app.cli import build_parser
    from snugfit.app.commands import plan

    words = ["plan", str(root), "--masks", "annotations/trimaps", "--arch", "test_resnet"]
    _, infer = plan._model(build_parser().parse_args([*words, "--memory-budget", "1GB"]))
    want = SegmentationDataLoaders.from_folder(root, masks="annotations/trimaps", **FAST).vocab
    assert infer == {"task": "segmentation", "vocab": list(want)} and len(want) == 4
    code, out, err = run_cli(capsys, *words, "--size", "64", "--bs", "4", "--memory-budget", "1GB")
    assert code == 0 and out.count("memory plan:") == 2, err
    code, _, err = run_cli(capsys, "plan", "--masks", "m", "--memory-budget", "1GB")
    assert code == 2 and err.strip() == "snugfit: error: --masks: give the DATA folder it is in"
