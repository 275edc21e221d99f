"""Segmentation masks given as run-length encodings in a CSV (Kaggle's Understanding
Clouds, Carvana, Airbus ships, Severstal steel), decoded once into mask files."""

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from snugfit.data import rle
from snugfit.data.check_seg import check_segmentation
from snugfit.data.seg_items import folder_pairs, pairs_of
from snugfit.data.seg_layouts import folders_of, is_segmentation_folder
from snugfit.data.segmentation import SegmentationDataLoaders
from test_cli import run_cli

CLOUDS = ["Fish", "Flower", "Gravel", "Sugar"]
H, W = 40, 60


encode = rle.encode  # pinned to known values by its doctests, as decode is


def _box(rng, band: int, bands: int) -> np.ndarray:
    """A rectangle inside one of ``bands`` vertical bands (so classes never overlap)."""
    mask = np.zeros((H, W), bool)
    left, width = band * W // bands, W // bands
    top, x = rng.integers(0, H // 2), left + rng.integers(0, width // 3)
    mask[top : top + rng.integers(6, H // 2), x : x + rng.integers(4, width - (x - left))] = True
    return mask


def _image(path: Path, rng) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(path)


def make_clouds(root: Path, n: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    """train_images/<id>.jpg, test_images/, train.csv (Image_Label, EncodedPixels): four
    rows per image, an empty cell for a class not present. Returns the class-index masks."""
    rng = np.random.default_rng(seed)
    lines, expected = ["Image_Label,EncodedPixels"], {}
    for i in range(n):
        name = f"{i:07d}.jpg"
        _image(root / "train_images" / name, rng)
        target = np.zeros((H, W), np.uint8)
        for k, label in enumerate(CLOUDS):
            region = _box(rng, k, 4) if rng.random() < 0.7 or i == 0 else np.zeros((H, W), bool)
            target[region] = k + 1
            lines.append(f"{name}_{label},{encode(region)}")
        expected[name] = target
    for i in range(2):
        _image(root / "test_images" / f"t{i}.jpg", rng)
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    return expected


def _mask_of(pairs, name: str) -> np.ndarray:
    mask = next(m for image, m in pairs if image.name == name)
    return np.asarray(Image.open(mask))


def test_decode_inverts_kaggles_encoding_in_both_orders():
    rng = np.random.default_rng(1)
    for column_major in (True, False):
        mask = rng.random((7, 11)) < 0.4
        assert np.array_equal(rle.decode(encode(mask, column_major), 7, 11, column_major), mask)
    assert not rle.decode("", 3, 4, True).any()
    with pytest.raises(ValueError, match="not a run-length encoding"):
        rle.decode("1 2 3", 3, 4, True)
    with pytest.raises(ValueError, match="runs past the image's 4x3 pixels"):
        rle.decode("10 5", 3, 4, True)


def test_understanding_clouds_as_downloaded(tmp_path, capsys):
    root = tmp_path / "clouds"
    expected = make_clouds(root)
    table = rle.find(root)
    assert table is not None and (table.images, table.image_col) == ("train_images", "Image_Label")
    assert table.label_in_name and is_segmentation_folder(root)
    found = folder_pairs(root)
    assert found.vocab == ["background", *CLOUDS]
    assert (
        found.folders.title
        == "train_images/ and the run-length masks of train.csv (column by column)"
    )
    pairs = pairs_of(found)
    assert len(pairs) == 10
    for name, target in expected.items():
        assert np.array_equal(_mask_of(pairs, name), target), name
    assert found.unlabelled == ((root / "test_images", 2),)
    code, out, err = run_cli(capsys, "check", str(root))
    assert code == 0, err
    assert "the run-length masks of train.csv (column by column)" in out
    assert "classes from train.csv" in out and "test_images/ with 2 images" in out


def test_row_by_row_is_found_from_the_masks_and_names_lack_the_extension(tmp_path):
    """Carvana's train_masks.csv numbers pixels along the rows; HuBMAP-like names lack .png."""
    rng = np.random.default_rng(2)
    root = tmp_path / "carvana"
    lines, expected = ["img,rle_mask", "gone,1 5"], {}  # a first row of no image
    for i in range(6):
        _image(root / "train" / f"car_{i}.png", rng)
        region = _box(rng, 0, 1)
        expected[f"car_{i}.png"] = region.astype(np.uint8)
        lines.append(f"car_{i},{encode(region, column_major=False)}")
    (root / "train_masks.csv").write_text("\n".join(lines) + "\n")
    found = folder_pairs(root)
    assert found.vocab == ["background", "foreground"]
    assert "(row by row)" in found.folders.title
    assert found.bad_rows == ((2, "gone", "no such image in train/"),)
    for name, target in expected.items():
        assert np.array_equal(_mask_of(pairs_of(found), name), target)


def test_rows_per_object_are_joined_and_an_empty_cell_is_background(tmp_path):
    """Airbus ships: a row per ship, one row with an empty cell for an image without."""
    rng = np.random.default_rng(3)
    root = tmp_path / "airbus"
    lines, expected = ["ImageId,EncodedPixels"], {}
    for i in range(6):
        name = f"ship{i}.jpg"
        _image(root / "train_v2" / name, rng)
        target = np.zeros((H, W), np.uint8)
        ships = [_box(rng, k, 3) for k in range(i % 3)]
        for ship in ships:
            target[ship] = 1
            lines.append(f"{name},{encode(ship)}")
        if not ships:
            lines.append(f"{name},")
        expected[name] = target
    _image(root / "train_v2" / "unlisted.jpg", rng)  # the CSV gives empty cells: no mask
    (root / "train_ship_segmentations_v2.csv").write_text("\n".join(lines) + "\n")
    found = folder_pairs(root)
    pairs = pairs_of(found)
    assert len(pairs) == 6 and [i.name for i, _ in found.no_mask] == ["unlisted.jpg"]
    for name, target in expected.items():
        assert np.array_equal(_mask_of(pairs, name), target)


def test_class_ids_bad_rows_and_images_without_rows_are_reported(tmp_path):
    """Severstal: ImageId, ClassId, EncodedPixels, rows for the defects only. A row that
    is no encoding, one past the image, one naming no image and one without a class are
    listed with their lines, and their images left out with the reason; an image
    without a row has no defect (the CSV has no empty cell): all background."""
    rng = np.random.default_rng(4)
    root = tmp_path / "steel"
    lines = ["ImageId,ClassId,EncodedPixels"]
    for i in range(8):
        _image(root / "train_images" / f"s{i}.jpg", rng)
        if i < 7:  # s7 has no row
            lines.append(f"s{i}.jpg,{1 + i % 4},{encode(_box(rng, 0, 1))}")
    lines += ["s0.jpg,2,1 2 3", f"s1.jpg,3,{H * W} 5", f"gone.jpg,1,{encode(_box(rng, 0, 1))}"]
    lines += [f"s2.jpg,,{encode(_box(rng, 0, 1))}"]
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    found = folder_pairs(root)
    assert found.vocab == ["background", "class_1", "class_2", "class_3", "class_4"]
    assert found.bad_rows == (
        (9, "s0.jpg", "not a run-length encoding (pairs of a start and a length)"),
        (10, "s1.jpg", f"runs past the image's {W}x{H} pixels"),
        (11, "gone.jpg", "no such image in train_images/"),
        (12, "s2.jpg", "no class for its encoding"),
    )
    used = sorted(image.name for image, _ in pairs_of(found))
    assert used == ["s3.jpg", "s4.jpg", "s5.jpg", "s6.jpg", "s7.jpg"]
    assert not _mask_of(pairs_of(found), "s7.jpg").any()
    assert found.folders.title.endswith(
        "; 1 images without a row read as background: the CSV lists only masks)"
    )
    reasons = {image.name: why for image, why in found.no_mask}
    assert reasons == {
        name: "no mask (no usable row in train.csv)" for name in ("s0.jpg", "s1.jpg", "s2.jpg")
    }
    report = check_segmentation(root, workers=1)
    listed = [(p.kind, p.path, p.reason) for p in report.issues if p.kind == "bad row"]
    assert listed[0] == (
        "bad row", str(root / "train.csv"),
        "line 9 (s0.jpg): not a run-length encoding (pairs of a start and a length)",
    )  # fmt: skip
    assert len(listed) == 4


def test_pixels_two_classes_claim_are_counted_and_the_later_row_kept(tmp_path):
    root = tmp_path / "clouds"
    rng = np.random.default_rng(5)
    _image(root / "train_images" / "a.jpg", rng)
    _image(root / "train_images" / "b.jpg", rng)
    both = _box(rng, 0, 1)
    rows = [
        f"a.jpg_Fish,{encode(both)}",
        f"a.jpg_Sugar,{encode(both)}",
        f"b.jpg_Fish,{encode(both)}",
    ]
    (root / "train.csv").write_text("Image_Label,EncodedPixels\n" + "\n".join(rows) + "\n")
    found = folder_pairs(root, valid_pct=0.5)
    assert (
        f"; {int(both.sum())} pixels in two classes, the later row's kept)" in found.folders.title
    )
    assert (_mask_of(pairs_of(found), "a.jpg")[both] == 2).all()  # Sugar


def test_decoded_once_and_again_when_the_csv_changes(tmp_path):
    root = tmp_path / "clouds"
    make_clouds(root, n=4)
    first = Path(folders_of(root).masks)
    written = {p: p.stat().st_mtime_ns for p in first.iterdir()}
    assert len(written) == 4 and Path(folders_of(root).masks) == first
    assert {p: p.stat().st_mtime_ns for p in first.iterdir()} == written
    text = (root / "train.csv").read_text().splitlines()
    (root / "train.csv").write_text("\n".join(text[:-1]) + "\n")  # 0000003's Sugar row gone
    os.utime(root / "train.csv", ns=(1, 1))
    again = Path(folders_of(root).masks)
    assert again != first and json.loads((again.parent / rle.DONE).read_text())["masks"] == 4


def test_codes_in_the_data_folder_name_the_classes(tmp_path):
    root = tmp_path / "clouds"
    make_clouds(root, n=4)
    (root / "codes.txt").write_text("sky\nfish\nflower\ngravel\nsugar\n")
    assert folder_pairs(root).vocab == ["sky", "fish", "flower", "gravel", "sugar"]


def test_a_classifier_csv_of_masks_is_one_line(tmp_path, capsys):
    root = tmp_path / "clouds"
    make_clouds(root, n=4)
    code, _, err = run_cli(capsys, "check", str(root), "--csv", "train.csv")
    assert code == 2 and err.strip() == (
        f"snugfit: error: {root / 'train.csv'}: its label column holds run-length masks "
        "(pairs of a start and a length), not classes: to segment, leave out --csv; the data "
        "folder's CSV of masks is found and decoded"
    )


def test_loaders_and_training_read_the_decoded_masks(tmp_path, capsys):
    root = tmp_path / "clouds"
    make_clouds(root, n=12)
    dls = SegmentationDataLoaders.from_folder(root, size=(H, W), bs=4, num_workers=0)
    assert (
        dls.vocab == ["background", *CLOUDS] and len(dls.train_items) + len(dls.valid_items) == 12
    )
    out = tmp_path / "run"
    args = ["--arch", "test_resnet", "--no-pretrained", "--bs", "4", "--size", f"{H}x{W}",
            "--workers", "0", "--epochs", "1", "--no-lr-find", "--out", str(out)]  # fmt: skip
    code, _, err = run_cli(capsys, "train", str(root), *args)
    assert code == 0, err
    meta = json.loads((out / "model" / "snugfit.json").read_text())
    assert meta["task"] == "segmentation" and meta["vocab"] == ["background", *CLOUDS]
    # predicted masks run-length encoded, as a submission: the PNGs, encoded
    images = sorted((root / "train_images").iterdir())[:3]
    for rows_flag in ([], ["--rle-rows"]):
        sub, masks = tmp_path / "sub.csv", tmp_path / "masks"
        code, _, err = run_cli(capsys, "predict", str(out), *map(str, images), "--out",
                               str(masks), "--rle", str(sub), *rows_flag)  # fmt: skip
        assert code == 0, err
        with sub.open(newline="") as f:
            rows = list(csv.reader(f))
        assert rows[0] == ["ImageId", "ClassId", "EncodedPixels"] and len(rows) == 1 + 3 * 4
        for name, label, cell in rows[1:]:
            mask = np.asarray(Image.open(masks / f"{Path(name).stem}.png"))
            want = mask == ["background", *CLOUDS].index(label)
            assert np.array_equal(rle.decode(cell, H, W, column_major=not rows_flag), want)
    code, _, err = run_cli(capsys, "predict", str(out), str(images[0]), "--rle-rows")
    assert (
        code == 2 and err.strip() == "snugfit: error: --rle-rows: give --rle FILE for the encodings"
    )


def test_many_masks_are_decoded_in_processes_alike(tmp_path, monkeypatch):
    root = tmp_path / "clouds"
    expected = make_clouds(root, n=70)  # over the 64 decoded in this process
    monkeypatch.setattr(rle.os, "cpu_count", lambda: 2)
    pools = []
    real = rle._pool
    monkeypatch.setattr(rle, "_pool", lambda n: pools.append(real(n)) or pools[-1])
    pairs = pairs_of(folder_pairs(root))
    assert pools and pools[0] is not None and type(pools[0]).__name__ == "ProcessPoolExecutor"
    assert len(pairs) == 70
    for name, target in expected.items():
        assert np.array_equal(_mask_of(pairs, name), target), name


def test_a_cache_that_cannot_be_written_is_one_line(tmp_path, capsys, monkeypatch):
    root = tmp_path / "clouds"
    make_clouds(root, n=4)
    blocked = tmp_path / "not_a_folder"
    blocked.write_text("")
    monkeypatch.setenv("SNUGFIT_CACHE", str(blocked))
    code, _, err = run_cli(capsys, "check", str(root))
    assert code == 2 and err.startswith(f"snugfit: error: {blocked / 'rle'}: cannot write the ")
    assert err.strip().endswith("set SNUGFIT_CACHE to a writable folder")
    assert len(err.strip().splitlines()) == 1
