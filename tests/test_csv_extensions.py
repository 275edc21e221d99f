"""CSV file names without their extension (Kaggle's APTOS, HAM10000, Planet): found
as the one image file of that name, counted by the check; fastai's ``suffix``."""

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from snugfit.data.check import check_csv
from snugfit.data.loaders import ImageDataLoaders
from snugfit.errors import SnugfitError

FAST = dict(size=16, bs=4, num_workers=0, cache=False)


def _kaggle(tmp_path: Path, ext: str = ".png", upper: bool = False) -> Path:
    """train.csv naming ``train_images/<id>`` files without their extension."""
    root = tmp_path / "aptos"
    (root / "train_images").mkdir(parents=True)
    rows = ["id_code,diagnosis"]
    for i in range(10):
        name = f"{i:012x}"
        grey = 20 + 20 * i  # distinct files: no duplicates
        fname = name + (ext.upper() if upper else ext)
        Image.fromarray(np.full((20, 20, 3), grey, np.uint8)).save(root / "train_images" / fname)
        rows.append(f"{name},{i % 2}")
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    return root


def test_names_without_extension_are_found_and_counted(tmp_path, caplog):
    root = _kaggle(tmp_path)
    with caplog.at_level(logging.INFO, logger="snugfit"):
        dls = ImageDataLoaders.from_csv(root, "train.csv", folder="train_images", **FAST)
    files = sorted(p.name for p, _ in dls.train_items + dls.valid_items)
    assert files == [f"{i:012x}.png" for i in range(10)]
    assert f"{root / 'train.csv'}: file names listed without their extension found: 10 as .png" in [
        r.getMessage() for r in caplog.records
    ]
    report = check_csv(root, "train.csv", folder="train_images", workers=1)
    assert report.found_as == {".png": 10} and report.missing == []
    assert report.describe().endswith(
        "; file names listed without their extension found: 10 as .png"
    )


def test_the_extension_is_found_in_any_case(tmp_path):
    root = _kaggle(tmp_path, ".jpg", upper=True)
    report = check_csv(root, "train.csv", folder="train_images", workers=1)
    assert report.found_as == {".jpg": 10}
    assert sorted(Path(p).name for p, _ in report.split.train + report.split.valid)[0] == (
        "000000000000.JPG"
    )


def test_two_files_of_the_name_are_named_not_guessed(tmp_path):
    root = _kaggle(tmp_path)
    Image.new("RGB", (20, 20), (9, 9, 9)).save(root / "train_images" / "000000000003.jpg")
    report = check_csv(root, "train.csv", folder="train_images", workers=1)
    assert [(Path(b.path).name, b.reason) for b in report.missing] == [
        (
            "000000000003",
            "no such file (listed in train.csv, line 5; 000000000003.jpg and "
            "000000000003.png exist: name one in the CSV)",
        )
    ]
    assert report.found_as == {".png": 9}
    with pytest.raises(SnugfitError, match=r"000000000003: listed in .*train.csv but not found "
                       r"\(000000000003.jpg and 000000000003.png exist: name one in the CSV\) "
                       r"\(1 of 10 files missing\)"):  # fmt: skip
        ImageDataLoaders.from_csv(root, "train.csv", folder="train_images", **FAST)


def test_suffix_is_appended_as_fastai_does(tmp_path):
    root = _kaggle(tmp_path)
    dls = ImageDataLoaders.from_csv(root, "train.csv", folder="train_images", suffix=".png",
                                    **FAST)  # fmt: skip
    assert len(dls.train_items) + len(dls.valid_items) == 10
    assert check_csv(root, "train.csv", folder="train_images", suffix=".png",
                     workers=1).found_as == {}  # fmt: skip
    with pytest.raises(SnugfitError, match=r"000000000000.jpg: listed in .* but not found"):
        ImageDataLoaders.from_csv(root, "train.csv", folder="train_images", suffix=".jpg", **FAST)


def test_a_name_with_an_image_extension_is_not_looked_up(tmp_path):
    root = _kaggle(tmp_path)
    csv = root / "train.csv"
    csv.write_text(csv.read_text().replace("000000000001,", "000000000001.jpg,"))
    report = check_csv(root, "train.csv", folder="train_images", workers=1)
    assert [Path(b.path).name for b in report.missing] == ["000000000001.jpg"]
