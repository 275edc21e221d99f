"""Files that are no images by their extension: never trained on, always reported.

A camera's raw ``.cr2`` files or a ``notes.txt`` in a class folder are not read; the
check lists them, the loaders log one line, and a folder holding nothing else says
what it holds. The extensions Pillow decodes that users meet (``.jfif``, ``.pgm``,
``.avif``, and a phone's ``.heic`` through pillow-heif) are read.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, features

from fixtures import loaders_and_warnings, make_image_folder, make_segmentation_folder
from snugfit.app.cli import main
from snugfit.data.check import check_folder
from snugfit.data.check_seg import check_segmentation
from snugfit.data.decode import decode_valid, open_image
from snugfit.data.loaders import ImageDataLoaders
from snugfit.data.walk import walk_images
from snugfit.errors import SnugfitError


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_a_walk_returns_the_files_it_does_not_read_but_not_system_or_hidden_ones(tmp_path):
    images = [
        _touch(tmp_path / n) for n in ("a.jpg", "b.JFIF", "sub/c.pgm", "sub/d.avif", "e.HEIC")
    ]
    others = [_touch(tmp_path / n) for n in ("notes.txt", "sub/IMG_1.CR2", "sub/README")]
    for n in ("Thumbs.db", "sub/desktop.ini", ".DS_Store", ".cache/e.txt"):
        _touch(tmp_path / n)
    found = walk_images(tmp_path)
    assert found.files == sorted(images)
    assert found.others == sorted(others)


@pytest.fixture
def with_others(tmp_path) -> Path:
    root = make_image_folder(tmp_path / "data", classes=("red", "green"), n_train=4, n_valid=2)
    _touch(root / "train" / "red" / "IMG_7.cr2")
    _touch(root / "train" / "red" / "IMG_8.cr2")
    _touch(root / "val" / "green" / "notes.txt")
    return root


def test_check_lists_each_file_not_read_and_counts_it_as_a_problem(with_others):
    report = check_folder(with_others, workers=1)
    assert report.counts["train"] == {"green": 4, "red": 4}
    assert [(Path(n.path).relative_to(with_others).as_posix(), n.reason)
            for n in report.not_images] == [
        ("train/red/IMG_7.cr2", ".cr2 is no image format snugfit reads"),
        ("train/red/IMG_8.cr2", ".cr2 is no image format snugfit reads"),
        ("val/green/notes.txt", ".txt is no image format snugfit reads"),
    ]  # fmt: skip
    assert report.problems == len(report.tiny) + 3  # the fixture's images are small
    lines = report.lines()
    assert "not images: 3 file(s) in the class folders, not read (by extension)" in lines
    assert report.to_dict()["not_images"][2]["reason"] == ".txt is no image format snugfit reads"


def test_snugfit_check_prints_and_saves_them(with_others, tmp_path, capsys):
    out = tmp_path / "check.json"
    main(["check", str(with_others), "--json", str(out)])
    printed = capsys.readouterr().out
    assert "not images: 3 file(s) in the class folders" in printed
    assert "train/red/IMG_7.cr2: .cr2 is no image format snugfit reads" in printed
    assert len(json.loads(out.read_text())["not_images"]) == 3


def test_loaders_log_one_line_naming_the_extensions(with_others, caplog):
    dls, warned = loaders_and_warnings(with_others, caplog)
    assert len(dls.train_items) == 8 and len(dls.valid_items) == 4
    assert len(warned) == 1
    assert warned[0].startswith(
        "3 file(s) not read, their extension is no image format snugfit reads "
        f"(.cr2: 2, .txt: 1; e.g. {with_others / 'train' / 'red' / 'IMG_7.cr2'}); it reads "
    )


def test_a_folder_of_raw_photos_says_what_it_holds(tmp_path):
    for cls in ("cats", "dogs"):
        for i in range(3):
            _touch(tmp_path / "data" / cls / f"IMG_{i}.CR2")
    _touch(tmp_path / "data" / "dogs" / "list.csv")
    with pytest.raises(SnugfitError) as e:
        ImageDataLoaders.from_folder(tmp_path / "data", num_workers=0)
    assert str(e.value).startswith(f"{tmp_path / 'data'}: no image files found (looked for ")
    assert str(e.value).endswith("; found 7 other file(s): .cr2: 6, .csv: 1)")


def test_a_segmentation_check_lists_them(tmp_path):
    root = make_segmentation_folder(tmp_path / "seg", n=6)
    _touch(root / "masks" / "scene_0.npy")
    report = check_segmentation(root, workers=1)
    assert report.usable == 6
    found = [(Path(p.path).name, p.reason) for p in report.issues if p.kind == "not image"]
    assert found == [("scene_0.npy", ".npy is no image format snugfit reads")]
    assert "not images: 1 file(s) in images/ or masks/, not read (by extension)" in report.lines()


@pytest.mark.parametrize("ext", [".jfif", ".jpe", ".pgm", ".ppm", ".avif", ".heic"])
def test_the_added_extensions_decode(tmp_path, ext):
    if ext == ".avif" and not features.check("avif"):
        pytest.skip("this Pillow has no AVIF support")
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[:, :30] = (200, 40, 40)
    img = Image.fromarray(rgb).convert("L" if ext == ".pgm" else "RGB")
    fmt = {".jfif": "JPEG", ".jpe": "JPEG", ".pgm": "PPM", ".ppm": "PPM", ".avif": "AVIF",
           ".heic": "HEIF"}[ext]  # fmt: skip
    path = tmp_path / f"x{ext}"
    img.save(path, fmt)
    assert walk_images(tmp_path).files == [path]
    x = decode_valid(path, 32, 1.0)
    assert x.shape == (3, 32, 32) and x.dtype == torch.uint8
    left, right = x[:, :, :8].float().mean(), x[:, :, -8:].float().mean()
    assert left > right + 40  # the bright half is where it was


def _phone_photo(path: Path, orientation: int) -> Path:
    """A HEIC photo as a phone saves it: landscape pixels and an EXIF orientation;
    the top-left quarter blue, the rest red."""
    rgb = np.full((32, 64, 3), (200, 30, 30), np.uint8)
    rgb[:16, :16] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, "HEIF", exif=exif.tobytes(), quality=95)
    return path


def test_heic_photos_are_read_upright_once(tmp_path):
    # Orientation 6: shown turned 90 degrees clockwise, portrait, the blue quarter at
    # the top right. Turned twice (the file's rotation and then EXIF's) it would be
    # landscape again.
    img = open_image(_phone_photo(tmp_path / "IMG_0001.HEIC", orientation=6))
    assert img.size == (32, 64)  # (width, height): portrait
    a = np.asarray(img).astype(int)
    assert a[4, 28, 2] > 200 and a[4, 28, 0] < 40  # top right blue
    assert a[4, 4, 0] > 150 and a[4, 4, 2] < 80  # top left red


def test_a_folder_of_heic_photos_trains_and_checks(tmp_path):
    for split, n in (("train", 4), ("val", 2)):
        for cls in ("cats", "dogs"):
            for i in range(n):
                _phone_photo(tmp_path / "data" / split / cls / f"IMG_{i}.HEIC", orientation=1)
    report = check_folder(tmp_path / "data", workers=1)
    assert report.counts["train"] == {"cats": 4, "dogs": 4}
    assert report.unreadable == [] and report.not_images == []
    dls = ImageDataLoaders.from_folder(tmp_path / "data", size=32, bs=4, num_workers=1)
    x, y = next(iter(dls.valid))
    assert x.shape == (4, 3, 32, 32) and y.tolist() == [0, 0, 1, 1]
