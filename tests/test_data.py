from __future__ import annotations

import gc
import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures import COLOURS, colour_image, make_image_folder
from snugfit.data.augment import center_batch
from snugfit.data.check import check_csv
from snugfit.data.decode import decode_train, decode_valid, open_image, prepare_for_predict
from snugfit.data.items import IMAGE_EXTENSIONS, get_image_files, split_stratified
from snugfit.data.loaders import ImageDataLoaders
from snugfit.errors import SnugfitError, UnreadableImage

FAST = {"num_workers": 0, "device": "cpu", "bs": 4, "size": 32}
COLOUR_CLASSES = ("a_red", "b_green", "c_blue", "d_yellow")  # sorted = COLOURS order


def _colour_of(x: torch.Tensor) -> int:
    """Index of the fixture colour closest in direction to an image's mean colour."""
    mean = x.float().mean(dim=(1, 2))
    ref = torch.tensor(COLOURS, dtype=torch.float32) / 255
    return int(torch.nn.functional.cosine_similarity(ref, mean[None], dim=1).argmax())


def _label_names(dls: ImageDataLoaders, items) -> dict[str, str]:
    return {p.name: dls.vocab[lab] for p, lab in items}


def _add_bad_files(folder: Path) -> dict[str, str]:
    """A zero-byte, a text and a truncated JPEG; returns name → expected reason."""
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not an image\n")
    buf = folder / "big_source.tmp"
    colour_image(0, np.random.default_rng(0), (120, 90)).save(buf, format="JPEG")
    data = buf.read_bytes()
    buf.unlink()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    return {"empty.jpg": "empty file", "text.jpg": "not an image", "truncated.jpg": "truncated"}


# -- layouts and labelling -----------------------------------------------------


def test_from_folder_labels_and_vocab(image_folder):
    dls = ImageDataLoaders.from_folder(image_folder, **FAST)
    assert dls.vocab == ["green", "red"] and dls.c == 2
    assert len(dls.train_items) == 16 and len(dls.valid_items) == 8
    for p, lab in dls.train_items + dls.valid_items:
        assert p.parent.name == dls.vocab[lab]
    assert all(p.parts[-3] == "train" for p, _ in dls.train_items)
    assert all(p.parts[-3] == "val" for p, _ in dls.valid_items)
    assert dls.skipped == {}
    assert len(dls.train) == 4 and len(dls.valid) == 2  # 16/4, 8/4 batches


@pytest.mark.parametrize("valid_name", ["val", "valid"])
def test_from_folder_detects_valid_folder(tmp_path, valid_name):
    root = make_image_folder(tmp_path / "d", n_train=5, n_valid=3, valid_name=valid_name)
    dls = ImageDataLoaders.from_folder(root, **FAST)
    assert len(dls.valid_items) == 6
    assert {p.parts[-3] for p, _ in dls.valid_items} == {valid_name}


def test_from_folder_explicit_valid_name_and_missing_valid(tmp_path):
    root = make_image_folder(tmp_path / "d", n_train=5, n_valid=3, valid_name="holdout")
    dls = ImageDataLoaders.from_folder(root, valid="holdout", **FAST)
    assert {p.parts[-3] for p, _ in dls.valid_items} == {"holdout"}
    with pytest.raises(SnugfitError, match="nope: no such directory"):
        ImageDataLoaders.from_folder(root, valid="nope", **FAST)


def test_from_folder_stratified_split_counts_and_determinism(tmp_path):
    # 12 images per class directly under root/<class>: no train/ or val/ folder.
    root = make_image_folder(tmp_path / "d", n_train=8, n_valid=4, valid_name=None)
    a = ImageDataLoaders.from_folder(root, seed=1, **FAST)
    b = ImageDataLoaders.from_folder(root, seed=1, **FAST)
    c = ImageDataLoaders.from_folder(root, seed=2, **FAST)
    assert Counter(lab for _, lab in a.valid_items) == {0: 2, 1: 2}  # round(0.2 * 12)
    assert Counter(lab for _, lab in a.train_items) == {0: 10, 1: 10}
    assert a.valid_items == b.valid_items and a.train_items == b.train_items
    assert a.valid_items != c.valid_items
    train, valid = {p for p, _ in a.train_items}, {p for p, _ in a.valid_items}
    assert not train & valid and len(train | valid) == 24
    # valid_pct forces a split even when a val/ folder exists.
    d = ImageDataLoaders.from_folder(make_image_folder(tmp_path / "e"), valid_pct=0.25, **FAST)
    assert Counter(lab for _, lab in d.valid_items) == {0: 2, 1: 2}  # 25% of 8 train each
    assert all(p.parts[-3] == "train" for p, _ in d.valid_items)


def test_split_stratified_counts():
    labels = ["a"] * 10 + ["b"] * 3 + ["c"] * 1 + ["d"] * 2
    train, valid = split_stratified(labels, 0.2, seed=0)
    assert Counter(labels[i] for i in valid) == {"a": 2, "b": 1, "d": 1}
    assert sorted(train + valid) == list(range(len(labels)))
    assert split_stratified(labels, 0.2, seed=0) == (train, valid)
    with pytest.raises(SnugfitError, match="valid_pct"):
        split_stratified(labels, 1.5, seed=0)


def _write_named(folder: Path, names_by_class: dict[int, list[str]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k, names in names_by_class.items():
        for name in names:
            colour_image(k, rng).save(folder / name)


def test_from_name_re(tmp_path):
    folder = tmp_path / "pets"
    _write_named(
        folder,
        {
            0: [f"great_pyrenees_{i}.jpg" for i in range(5)],
            1: [f"Abyssinian_{i}.jpg" for i in range(5)],
        },
    )
    dls = ImageDataLoaders.from_name_re(folder, r"^(.*)_\d+\.jpg$", **FAST)
    assert dls.vocab == ["Abyssinian", "great_pyrenees"]
    for name, cls in _label_names(dls, dls.train_items + dls.valid_items).items():
        assert name.startswith(cls + "_")
    assert len(dls.valid_items) == 2  # one per class
    # A list of files works too.
    files = sorted(folder.iterdir())
    dls2 = ImageDataLoaders.from_name_re(files, r"^(.*)_\d+\.jpg$", **FAST)
    assert dls2.train_items == dls.train_items


def test_from_name_re_non_matching_file(tmp_path):
    folder = tmp_path / "pets"
    _write_named(folder, {0: ["cat_1.jpg", "cat_2.jpg"], 1: ["dog_1.jpg", "weird.jpg"]})
    with pytest.raises(SnugfitError, match=r"weird\.jpg.*does not match") as e:
        ImageDataLoaders.from_name_re(folder, r"^(.*)_\d+\.jpg$", **FAST)
    assert r"_\d+" in str(e.value)


def _csv_dataset(tmp_path: Path, rows: list[str]) -> Path:
    root = tmp_path / "csvdata"
    _write_named(root / "images", {0: [f"r{i}.png" for i in range(4)]})
    _write_named(root / "images", {1: [f"g{i}.png" for i in range(4)]})
    (root / "labels.csv").write_text("\n".join(["fname,label,is_valid", *rows]) + "\n")
    return root


def test_from_csv_labels_and_valid_col(tmp_path):
    rows = [f"r{i}.png,red,{int(i == 0)}" for i in range(4)]
    rows += [f"g{i}.png,green,{'True' if i < 2 else 'False'}" for i in range(4)]
    root = _csv_dataset(tmp_path, rows)
    dls = ImageDataLoaders.from_csv(root, folder="images", valid_col="is_valid", **FAST)
    assert dls.vocab == ["green", "red"]
    names = _label_names(dls, dls.train_items + dls.valid_items)
    assert names == {
        **{f"r{i}.png": "red" for i in range(4)},
        **{f"g{i}.png": "green" for i in range(4)},
    }
    assert {p.name for p, _ in dls.valid_items} == {"r0.png", "g0.png", "g1.png"}
    # Without valid_col: a stratified random split (round(0.2 * 4) = 1 per class).
    dls = ImageDataLoaders.from_csv(root, folder="images", label_col="label", **FAST)
    assert Counter(lab for _, lab in dls.valid_items) == {0: 1, 1: 1}


def test_from_csv_missing_files(tmp_path):
    rows = [f"r{i}.png,red,0" for i in range(4)] + [f"g{i}.png,green,0" for i in range(4)]
    root = _csv_dataset(tmp_path, [*rows, "gone1.png,red,0", "gone2.png,green,1"])
    with pytest.raises(SnugfitError, match=r"gone1\.png.*2 of 10 files missing"):
        ImageDataLoaders.from_csv(root, folder="images", **FAST)


def test_a_row_without_a_label_is_skipped_and_named_with_its_line(tmp_path, caplog):
    """Not a class named "": the row is left out, the check and the loaders name it,
    and line numbers count the blank lines of the file."""
    rows = [f"r{i}.png,red,{int(i == 0)}" for i in range(4)]
    rows += [f"g{i}.png,green,{int(i == 0)}" for i in range(3)]
    root = _csv_dataset(tmp_path, [*rows[:2], "", *rows[2:], "g3.png, ,0", "gone.png,red,0"])
    caplog.set_level(logging.WARNING, logger="snugfit")
    dls = ImageDataLoaders.from_csv(root, folder="images", valid_col="is_valid",
                                    unreadable={str(root / "images" / "gone.png"): "missing"},
                                    **FAST)  # fmt: skip
    assert dls.vocab == ["green", "red"]
    items = dls.train_items + dls.valid_items
    assert sorted(p.name for p, _ in items) == sorted(
        [*(f"r{i}.png" for i in range(4)), *(f"g{i}.png" for i in range(3))]
    )
    assert [r.getMessage() for r in caplog.records] == [
        f"{root / 'labels.csv'}: 1 row(s) with an empty label cell, skipped "
        f"(e.g. line 10: {root / 'images' / 'g3.png'})"
    ]
    report = check_csv(root, folder="images", valid_col="is_valid", workers=1)
    assert report.classes == ["green", "red"]
    assert [(Path(b.path).name, b.reason) for b in report.unlabelled] == [
        ("g3.png", "empty label cell (labels.csv, line 10)")
    ]
    assert [(Path(b.path).name, b.reason) for b in report.missing] == [
        ("gone.png", "no such file (listed in labels.csv, line 11)")
    ]
    assert "no label: 1 row(s) with an empty label cell, skipped" in report.lines()
    assert report.problems == 2 + len(report.tiny)


def _tagged_csv(tmp_path: Path, delim: str, tags: list[str]) -> Path:
    """Sixteen images, two of each of the eight ``tags`` cells (quoted: a list of tags
    may hold commas), so that ``valid_pct=0.5`` validates one of each."""
    root = tmp_path / "tagged"
    _write_named(root / "images", {0: [f"r{i}.png" for i in range(8)]})
    _write_named(root / "images", {1: [f"g{i}.png" for i in range(8)]})
    names = [f"r{i}.png" for i in range(8)] + [f"g{i}.png" for i in range(8)]
    rows = [f'{n},"{t.replace(" ", delim)}"' for n, t in zip(names, tags * 2, strict=True)]
    (root / "labels.csv").write_text("\n".join(["fname,tags", *rows]) + "\n")
    return root


LISTS = ["sky leaf", "leaf sky", "sky", "ant", "sky ant leaf", "ant leaf", "leaf", "ant sky"]


@pytest.mark.parametrize("delim", [",", ";", " "])
def test_labels_that_look_like_lists_are_named_with_the_delimiter_to_pass(tmp_path, caplog, delim):
    """Multi-label rows read without label_delim: each tag combination would be learnt
    as a class of its own. The check and the loaders say which --label-delim to pass."""
    root = _tagged_csv(tmp_path, delim, LISTS)
    caplog.set_level(logging.WARNING, logger="snugfit")
    dls = ImageDataLoaders.from_csv(root, folder="images", label_col="tags", valid_pct=0.5, **FAST)
    assert not dls.multi_label and len(dls.vocab) == 8  # as asked: one class a combination
    hint = f"labels look like lists: 5 of 8 classes hold {delim!r}"
    [said] = [r.getMessage() for r in caplog.records]
    assert hint in said and f"--label-delim {delim!r}" in said
    report = check_csv(root, folder="images", label_col="tags", valid_pct=0.5, workers=1)
    assert report.list_delim == delim and report.problems == 1 + len(report.tiny)
    assert any(line.startswith(hint) for line in report.lines())
    # read as asked, the same file is four labels, and nothing to say
    multi = check_csv(
        root, folder="images", label_col="tags", label_delim=delim, valid_pct=0.5, workers=1
    )
    assert multi.classes == ["ant", "leaf", "sky"] and multi.list_delim is None


def test_single_label_names_with_spaces_are_no_lists(tmp_path, caplog):
    names = ["golden retriever", "labrador retriever", "pug", "great dane"] * 2
    root = _tagged_csv(tmp_path, " ", names)
    caplog.set_level(logging.WARNING, logger="snugfit")
    ImageDataLoaders.from_csv(root, folder="images", label_col="tags", valid_pct=0.5, **FAST)
    assert not caplog.records
    report = check_csv(root, folder="images", label_col="tags", valid_pct=0.5, workers=1)
    assert report.list_delim is None and len(report.classes) == 4


def test_a_csv_with_no_label_at_all_is_refused(tmp_path):
    root = _csv_dataset(tmp_path, ["r0.png,,0", "g0.png, ,0"])
    with pytest.raises(
        SnugfitError, match=r"labels\.csv: no labels found \(every label cell is empty\)"
    ):
        ImageDataLoaders.from_csv(root, folder="images", **FAST)


def test_a_file_listed_twice_is_named_once_with_its_count(tmp_path):
    rows = [f"r{i}.png,red,{int(i == 0)}" for i in range(4)]
    rows += [f"g{i}.png,green,{int(i == 0)}" for i in range(4)]
    root = _csv_dataset(tmp_path, [*rows, "r1.png,green,0"])
    report = check_csv(root, folder="images", valid_col="is_valid", workers=1)
    assert [d.kinds for d in report.duplicates] == [["two labels"]]
    lines = report.lines()
    assert "  two labels: images/r1.png (listed 2 times)" in lines


# -- bad input -------------------------------------------------------------------


def test_missing_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(SnugfitError, match="no such directory") as e:
        ImageDataLoaders.from_folder(missing, **FAST)
    assert str(missing) in str(e.value)


def test_empty_folder_and_no_images(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SnugfitError, match="no image files found") as e:
        ImageDataLoaders.from_folder(empty, **FAST)
    assert str(empty) in str(e.value) and ".jpg" in str(e.value)
    texts = tmp_path / "texts"
    for cls in ("a", "b"):
        (texts / "train" / cls).mkdir(parents=True)
        (texts / "train" / cls / "notes.txt").write_text("hi")
    with pytest.raises(SnugfitError, match="no image files found") as e:
        ImageDataLoaders.from_folder(texts, **FAST)
    assert str(texts) in str(e.value)


def test_one_class_only(tmp_path):
    root = make_image_folder(tmp_path / "one", classes=("lonely",))
    with pytest.raises(SnugfitError, match=r"only one class \('lonely'\)") as e:
        ImageDataLoaders.from_folder(root, **FAST)
    assert str(root) in str(e.value)


@pytest.mark.parametrize("arg, value", [("bs", 0), ("size", -3), ("size", 2.5), ("presize", 0)])
def test_bad_numbers_name_the_argument(image_folder, arg, value):
    with pytest.raises(SnugfitError, match=f"{arg}: must be a positive integer"):
        ImageDataLoaders.from_folder(image_folder, **{**FAST, arg: value})


def test_empty_validation_set_is_an_error(tmp_path):
    root = make_image_folder(tmp_path / "d", n_train=3, n_valid=1)
    for f in get_image_files(root / "val"):
        f.write_bytes(b"")  # every validation image unreadable
    with pytest.raises(SnugfitError, match="validation set is empty"):
        ImageDataLoaders.from_folder(root, **FAST)


# -- unreadable files ------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_files_are_skipped_and_reported_once(image_folder, caplog, workers):
    expected = _add_bad_files(image_folder / "train" / "red")
    with caplog.at_level(logging.WARNING, logger="snugfit"):
        dls = ImageDataLoaders.from_folder(image_folder, **{**FAST, "num_workers": workers})
        # Header problems are known before any batch is made.
        assert {Path(p).name for p in dls.skipped} == {"empty.jpg", "text.jpg"}
        for _ in range(2):
            seen = Counter()
            for x, y in dls.train:
                assert x.shape[1:] == (3, 32, 32)
                seen.update(y.tolist())
            assert seen == {0: 8, 1: 8}  # every readable image, once
    assert {Path(p).name: r for p, r in dls.skipped.items()}.keys() == expected.keys()
    for p, reason in dls.skipped.items():
        assert expected[Path(p).name] in reason
    warnings = [r.getMessage() for r in caplog.records if r.name == "snugfit"]
    assert len(warnings) == 3  # once per file, not once per epoch
    assert all(w.startswith(f"skipping {image_folder}") for w in warnings)
    assert any("truncated.jpg: truncated image data" in w for w in warnings)


def test_open_image_reasons(tmp_path):
    reasons = _add_bad_files(tmp_path)
    for name, reason in reasons.items():
        with pytest.raises(UnreadableImage) as e:
            open_image(tmp_path / name)
        assert reason in e.value.reason and name in str(e.value)


# -- decoding --------------------------------------------------------------------


def _save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


def test_odd_modes_come_out_rgb(tmp_path):
    red = Image.new("RGB", (8, 8), (255, 0, 0))
    palette = _save(red.convert("P", palette=Image.Palette.ADAPTIVE), tmp_path / "p.png")
    rgba = Image.new("RGBA", (8, 8), (0, 0, 255, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black
    rgba_path = _save(rgba, tmp_path / "rgba.png")
    cmyk = _save(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), tmp_path / "cmyk.jpg")
    grey = _save(Image.new("L", (8, 8), 77), tmp_path / "l.png")
    deep = np.array([[0, 32896, 65535, 1000]], dtype=np.uint16).repeat(4, axis=0)
    deep_path = _save(Image.fromarray(deep), tmp_path / "deep.png")
    assert Image.open(deep_path).mode.startswith("I")

    for p in (palette, rgba_path, cmyk, grey, deep_path):
        assert open_image(p).mode == "RGB", p
    assert open_image(palette).getpixel((3, 3)) == (255, 0, 0)
    assert open_image(rgba_path).getpixel((0, 0)) == (255, 255, 255)  # composited on white
    assert open_image(rgba_path).getpixel((3, 3)) == (0, 0, 255)
    r, g, b = open_image(cmyk).getpixel((3, 3))
    assert r > 200 and g < 60 and b < 60
    assert open_image(grey).getpixel((3, 3)) == (77, 77, 77)
    row = np.asarray(open_image(deep_path))[0, :, 0]
    assert row.tolist() == [0, 128, 255, 4]  # scaled by 255/65535, not clipped


def test_a_12_bit_scan_in_a_16_bit_png_keeps_its_grey_levels(tmp_path):
    """X-rays and CT slices saved from DICOM: 12-bit values in a 16-bit PNG. Scaled by
    65535 they became 16 grey levels (0-16); scaled by 4095 they span 0-255."""
    scan = np.linspace(0, 4095, 256).round().astype(np.uint16).reshape(16, 16)
    path = _save(Image.fromarray(scan), tmp_path / "xray.png")
    assert Image.open(path).mode == "I;16"
    grey = np.asarray(open_image(path))[..., 0]
    assert grey.min() == 0 and grey.max() == 255 and len(np.unique(grey)) == 256
    assert grey[8, 0] == round(int(scan[8, 0]) * 255 / 4095)
    small = _save(Image.fromarray(np.full((4, 4), 200, np.uint16)), tmp_path / "eight.png")
    assert np.asarray(open_image(small))[0, 0, 0] == 200  # 8-bit values in a 16-bit file


def test_exif_rotated_jpeg_comes_out_upright(tmp_path):
    # Stored 40 wide x 20 high, marked red in the top-left corner; orientation 6
    # means "rotate 90 degrees clockwise to display", so the marker ends top-right.
    img = Image.new("RGB", (40, 20), (128, 128, 128))
    img.paste((255, 0, 0), (0, 0, 8, 8))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(img, tmp_path / "rot.jpg", exif=exif, quality=95)
    up = open_image(path)
    assert up.size == (20, 40)
    r, g, _ = up.getpixel((17, 2))
    assert r > 200 and g < 60
    assert up.getpixel((2, 2))[0] < 160  # the old corner is grey now


def test_decode_shapes_and_dtype(tmp_path):
    rng = np.random.default_rng(0)
    big = _save(colour_image(2, rng, (800, 600)), tmp_path / "big.jpg")  # draft path
    small = _save(colour_image(1, rng, (30, 50)), tmp_path / "small.png")  # upsampled
    for p in (big, small):
        t = decode_train(p, 40)
        v = decode_valid(p, 32, 0.875)
        assert t.shape == (3, 40, 40) and t.dtype == torch.uint8
        assert v.shape == (3, 32, 32) and v.dtype == torch.uint8
    # Colour survives: the blue channel dominates the blue image.
    mean = decode_train(big, 40).float().mean(dim=(1, 2))
    assert mean[2] > 180 and mean[0] < 80


def test_prepare_for_predict_paths_and_pil_agree(tmp_path, image_folder):
    files = get_image_files(image_folder / "val")[:3]
    from_paths = prepare_for_predict(files, 32, 0.875)
    from_pil = prepare_for_predict([Image.open(f) for f in files], 32, 0.875)
    assert from_paths.shape == (3, 3, 32, 32) and from_paths.dtype == torch.float32
    torch.testing.assert_close(from_paths, from_pil)
    expected = center_batch(torch.stack([decode_valid(f, 32, 0.875) for f in files]), 32)
    torch.testing.assert_close(from_paths, expected)
    dls = ImageDataLoaders.from_folder(image_folder, **FAST)
    torch.testing.assert_close(dls.test_tensor(files[0]), expected[:1])


def test_image_extensions_case_insensitive(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a.JPG", "b.png", "c.Jpeg", "d.txt", "e.webp"):
        colour_image(0, rng).save(tmp_path / name, format="PNG")
    assert [p.name for p in get_image_files(tmp_path)] == ["a.JPG", "b.png", "c.Jpeg", "e.webp"]
    assert ".tiff" in IMAGE_EXTENSIONS and ".gif" in IMAGE_EXTENSIONS


# -- loaders ---------------------------------------------------------------------


def test_labels_stay_aligned_through_shuffle_and_augmentation(tmp_path):
    root = make_image_folder(tmp_path / "c", classes=COLOUR_CLASSES, n_train=6, n_valid=2)
    dls = ImageDataLoaders.from_folder(root, **{**FAST, "bs": 24, "max_rotate": 30.0})
    dls.mean, dls.std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    x, y = next(iter(dls.train))
    assert x.shape == (24, 3, 32, 32) and y.dtype == torch.long
    assert sorted(y.tolist()) != y.tolist()  # it was shuffled
    assert [_colour_of(img) for img in x] == y.tolist()
    xv, yv = next(iter(dls.valid))
    assert [_colour_of(img) for img in xv] == yv.tolist()


def test_train_loader_is_deterministic_per_epoch(image_folder):
    a = ImageDataLoaders.from_folder(image_folder, **FAST)
    b = ImageDataLoaders.from_folder(image_folder, **FAST)
    first_a = [(x, y) for x, y in a.train]
    second_a = [(x, y) for x, y in a.train]
    b.one_batch()  # peeking does not use up an epoch
    first_b = [(x, y) for x, y in b.train]
    for (xa, ya), (xb, yb) in zip(first_a, first_b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not all(torch.equal(y1, y2) for (_, y1), (_, y2) in zip(first_a, second_a, strict=True))
    assert a.train.epoch == 2


def test_last_batch_is_short_and_normalised_with_current_stats(image_folder):
    dls = ImageDataLoaders.from_folder(image_folder, **{**FAST, "bs": 5})
    sizes = [len(y) for _, y in dls.train]
    assert sizes == [5, 5, 5, 1] and len(dls.train) == 4
    dls.augment = False
    dls.mean, dls.std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # set after construction
    x, _ = dls.one_batch()
    assert x.min() >= 0 and x.max() <= 1


def test_set_size_updates_presize(image_folder):
    dls = ImageDataLoaders.from_folder(image_folder, **FAST)
    assert dls.presize == 40  # round(32 * 1.15 / 8) * 8
    dls.set_size(64)
    assert (dls.size, dls.presize) == (64, 72)
    assert dls.train.dataset.size == 72 and dls.valid.dataset.size == 64
    x, _ = dls.one_batch()
    assert x.shape[-2:] == (64, 64)
    fixed = ImageDataLoaders.from_folder(image_folder, **{**FAST, "presize": 50})
    fixed.set_size(48)
    assert fixed.presize == 50


def test_show_batch_writes_png(image_folder, tmp_path):
    dls = ImageDataLoaders.from_folder(image_folder, **FAST)
    out = dls.show_batch(tmp_path / "grid.png", n=4)
    assert out == tmp_path / "grid.png"
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size[0] > 100
    out = dls.show_batch(tmp_path / "valid.png", split="valid")
    assert Image.open(out).format == "PNG"


def test_draft_decode_keeps_requested_size(tmp_path):
    big = _save(colour_image(0, np.random.default_rng(0), (800, 600)), tmp_path / "big.jpg")
    img = open_image(big, 64)
    assert min(img.size) >= 64 and img.size[0] < 800  # decoded smaller, never too small
    assert open_image(big).size == (800, 600)


def test_deleting_loaders_with_workers_is_quick(image_folder):
    # Regression: collected in a GC cycle, persistent workers used to take 5 s each to stop.
    dls = ImageDataLoaders.from_folder(image_folder, **{**FAST, "num_workers": 2})
    assert sum(len(y) for _, y in dls.train) == 16
    start = time.perf_counter()
    del dls
    gc.collect()
    assert time.perf_counter() - start < 3


def test_images_not_in_class_folders(tmp_path):
    colour_image(0, np.random.default_rng(0)).save(tmp_path / "loose.jpg")
    with pytest.raises(SnugfitError, match="one subfolder per class"):
        ImageDataLoaders.from_folder(tmp_path, **FAST)


def test_real_hymenoptera(hymenoptera):
    dls = ImageDataLoaders.from_folder(hymenoptera, **{**FAST, "bs": 8, "size": 64})
    assert dls.vocab == ["ants", "bees"]
    assert (len(dls.train_items), len(dls.valid_items)) == (245, 153)
    x, y = dls.one_batch()
    assert x.shape == (8, 3, 64, 64) and y.shape == (8,)


# -- settings pushed to the loaders; the loader methods training calls ---------------


def test_loaders_get_settings_as_values_not_their_parent(image_folder):
    dls = ImageDataLoaders.from_folder(image_folder, **FAST)
    assert not hasattr(dls.train, "dls")  # no back-reference
    assert dls.train.settings is dls.valid.settings is dls.settings
    dls.mean = (0.0, 0.0, 0.0)
    dls.augment = False
    dls.set_size(48)
    assert dls.preprocessing.mean == (0.0, 0.0, 0.0) and dls.preprocessing.size == 48
    assert dls.augmentation.enabled is False and dls.augment is False
    assert dls.train.settings is dls.valid.settings is dls.settings  # pushed to both
    assert dls.train.dataset.size == dls.presize == 56


def test_with_preprocessing_is_new_loaders_sharing_the_data(image_folder, monkeypatch):
    from snugfit.data.preprocessing import Preprocessing

    dls = ImageDataLoaders.from_folder(image_folder, **FAST)
    list(dls.train)  # an epoch started: the new loaders continue from it
    opened = []
    real_open = Image.open
    monkeypatch.setattr(
        Image, "open", lambda p, *a, **k: opened.append(Path(p)) or real_open(p, *a, **k)
    )
    p = Preprocessing(32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), crop_pct=1.0)
    new = dls.with_preprocessing(p)
    assert opened == []
    assert new is not dls and new.preprocessing == p and new.mean == (0.5, 0.5, 0.5)
    assert dls.mean != new.mean and dls.crop_pct == 0.875  # the original is left as it is
    assert new.train_items is dls.train_items and new.vocab is dls.vocab
    assert new.task is dls.task and new.skipped is dls.skipped and new.cache is dls.cache
    assert new.train.epoch == dls.train.epoch == 1


def test_batches_of_an_explicit_epoch_leave_the_counter(image_folder):
    dls = ImageDataLoaders.from_folder(image_folder, **FAST)
    plain = ImageDataLoaders.from_folder(image_folder, **FAST)
    plain.augment = False
    first = [(x, y) for x, y in plain.train]  # epoch 0, not augmented
    same = list(dls.train.batches(0, augment=False))
    assert dls.train.epoch == 0
    for (xa, ya), (xb, yb) in zip(first, same, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    augmented = [(x, y) for x, y in dls.train]
    again = list(dls.train.batches(0))
    assert dls.train.epoch == 1
    for (xa, ya), (xb, yb) in zip(augmented, again, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_decoded_batches_are_training_decodes_in_order(tmp_path):
    root = make_image_folder(tmp_path / "d", n_train=3, n_valid=2)
    bad = root / "val" / "red" / "late.jpg"
    bad.write_bytes(b"")
    dls = ImageDataLoaders.from_folder(root, **FAST)
    dls.valid.items.append((bad, 1))  # emptied after construction: found when decoded
    batches = list(dls.valid.decoded_batches())
    x = torch.cat([x for x, _ in batches])
    y = torch.cat([y for _, y in batches])
    assert x.dtype == torch.uint8 and x.shape == (4, 3, dls.presize, dls.presize)
    assert y.tolist() == [lab for _, lab in dls.valid_items]
    assert torch.equal(x[0], decode_train(dls.valid_items[0][0], dls.presize))
    assert dls.skipped == {str(bad): "empty file"}
