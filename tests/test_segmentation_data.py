"""Segmentation data: image/mask pairs, their alignment through decoding and augmentation,
classes, splits, the pixel cache, and the data check of segmentation folders."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import snugfit.data.seg_loader
import snugfit.data.segmentation
from fixtures import SEG_CODES, SEG_COLOURS, VOID_COLOUR, make_segmentation_folder, seg_scene
from snugfit.app.cli import main
from snugfit.data.augment import batch_augment_masks, center_crop, denormalize
from snugfit.data.check_report import describe, problem_groups
from snugfit.data.check_seg import check_segmentation
from snugfit.data.datasets import EpochShuffle
from snugfit.data.masks import decode_pair, open_mask
from snugfit.data.preprocessing import Preprocessing
from snugfit.data.segmentation import SegmentationDataLoaders
from snugfit.errors import SnugfitError, UnreadableImage

FAST = {"num_workers": 0, "device": "cpu", "bs": 4}
PALETTE = np.array([*SEG_COLOURS, VOID_COLOUR], dtype=np.float64)
LABELS = np.array([*range(len(SEG_COLOURS)), 255])


def _pixel_classes(rgb: np.ndarray, tol: float = 0.05) -> np.ndarray:
    """Each pixel's class when its colour *is* a class colour (within ``tol`` of 0..255),
    else -1: a pixel blended across a boundary has no class of its own."""
    d = np.abs(rgb[..., None, :] - PALETTE).max(-1)
    exact = d.min(-1) <= tol
    return np.where(exact, LABELS[d.argmin(-1)], -1)


def _as_rgb(x: torch.Tensor, mean, std) -> np.ndarray:
    return (denormalize(x.float(), mean, std) * 255).permute(0, 2, 3, 1).numpy()


def _agreement(rgb: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """``(share of the pixels whose colour is a class colour, share of those whose mask
    says that class)``."""
    seen = _pixel_classes(rgb)
    exact = seen >= 0
    return exact.mean(), (seen == y)[exact].mean()


def _scenes(n: int, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    pairs = [seg_scene(rng, h, w, noise=0) for _ in range(n)]
    x = torch.from_numpy(np.stack([p[0] for p in pairs])).permute(0, 3, 1, 2).contiguous()
    return x, torch.from_numpy(np.stack([p[1] for p in pairs]))


# -- alignment: a mask computed from the image's own pixels still matches ------------


@pytest.mark.parametrize(
    ("in_hw", "out_hw", "aug"),
    [
        ((48, 80), (32, 40), {}),  # a crop out of a wide image
        ((64, 48), (64, 48), {"max_rotate": 30.0, "min_scale": 0.5}),  # whole, portrait
        ((40, 96), (24, 24), {"max_rotate": 45.0, "ratio": (0.5, 2.0)}),
    ],
)
def test_augmented_masks_match_the_augmented_images(in_hw, out_hw, aug):
    x, y = _scenes(16, *in_hw)
    extent = (out_hw[0] / in_hw[0], out_hw[1] / in_hw[1])
    plain = {"mean": (0, 0, 0), "std": (1, 1, 1), "max_lighting": 0.0}
    g = torch.Generator().manual_seed(3)
    xa, ya = batch_augment_masks(x, y, out_hw, extent=extent, generator=g, **plain, **aug)
    assert xa.shape == (16, 3, *out_hw) and xa.dtype == torch.float32
    assert ya.shape == (16, *out_hw) and ya.dtype == torch.long
    rgb = xa.permute(0, 2, 3, 1).numpy() * 255
    exact, agree = _agreement(rgb, ya.numpy())
    assert exact > 0.8  # most pixels are inside a region, not on a boundary
    assert agree > 0.999
    # The test can fail: a mask one pixel off, or not flipped with its image, disagrees.
    _, shifted = _agreement(rgb[:, :, 1:], ya.numpy()[:, :, :-1])
    _, unflipped = _agreement(rgb, ya.flip(-1).numpy())
    assert shifted < 0.99 and unflipped < 0.95


@pytest.mark.parametrize("rotate", [0.0, 30.0])
def test_masks_sample_where_the_images_do_to_half_a_pixel(rotate):
    # Image channels are the pixel's column and row: bilinear resampling of a ramp gives
    # exactly the coordinate sampled, and a mask of the same ramp (nearest) must be that
    # coordinate rounded. A grid off by a fraction of a pixel would miss by more.
    h, w = 60, 100
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    x = torch.stack([cols, rows, cols]).to(torch.uint8).expand(4, 3, h, w).contiguous()
    plain = {"mean": (0, 0, 0), "std": (1, 1, 1), "max_lighting": 0.0}
    for channel, ramp in enumerate((cols, rows)):
        masks = ramp.to(torch.uint8).expand(4, h, w)
        xa, ya = batch_augment_masks(
            x, masks, (40, 48), extent=(40 / h, 48 / w), generator=torch.Generator().manual_seed(0),
            min_scale=0.5, max_rotate=rotate, **plain,
        )  # fmt: skip
        miss = (xa[:, channel] * 255 - ya).abs()
        assert miss.max() <= 0.5 + 1e-3 and miss.mean() > 0.1  # rounded, not copied


def test_augmentation_really_moves_the_pixels():
    x, y = _scenes(8, 48, 80)
    g = torch.Generator().manual_seed(0)
    _, ya = batch_augment_masks(x, y, (32, 40), extent=(32 / 48, 40 / 80), generator=g)
    assert not torch.equal(ya, center_crop(y, (32, 40)).long())
    flipped = [
        torch.equal(a, center_crop(m, (32, 40)).long().flip(-1)) for a, m in zip(ya, y, strict=True)
    ]
    assert not all(flipped)


def test_loaders_keep_image_and_mask_aligned_through_files_cache_and_crops(tmp_path):
    root = make_segmentation_folder(
        tmp_path / "d", n=12, sizes=((60, 90), (90, 60), (48, 72), (64, 64)), noise=0
    )
    dls = SegmentationDataLoaders.from_folder(
        root, size=(48, 72), crop=(32, 40), max_rotate=20.0, max_lighting=0.0, **FAST
    )
    for _ in range(2):  # decoded, then read back from the cache
        for x, y in dls.train:
            assert x.shape[1:] == (3, 32, 40) and y.shape[1:] == (32, 40)
            exact, agree = _agreement(_as_rgb(x, dls.mean, dls.std), y.numpy())
            assert exact > 0.7 and agree > 0.999
    for x, y in dls.valid:
        assert x.shape[1:] == (3, 48, 72) and y.shape[1:] == (48, 72)
        exact, agree = _agreement(_as_rgb(x, dls.mean, dls.std), y.numpy())
        assert exact > 0.7 and agree > 0.999


def test_masks_are_never_interpolated(tmp_path):
    # Classes 0 and 2 only (and void): any blending would make 1s, or values above 2.
    root = make_segmentation_folder(tmp_path / "d", n=8, codes=("a", "b", "c"), noise=0)
    for mask in (root / "masks").iterdir():
        values = open_mask(mask)
        values[(values != 0) & (values != 255)] = 2
        Image.fromarray(values, "L").save(mask)
    dls = SegmentationDataLoaders.from_folder(
        root, size=(40, 56), crop=(24, 32), max_rotate=45.0, min_scale=0.3, **FAST
    )
    seen = set()
    for epoch in range(3):
        for _, y in dls.train.batches(epoch):
            seen |= set(y.unique().tolist())
    for _, y in dls.valid:
        seen |= set(y.unique().tolist())
    assert seen == {0, 2, 255}
    # Pillow's resize of the mask itself (nearest) at a size that is no multiple.
    pixels = decode_pair(root / "images" / "scene_00.png", root / "masks" / "scene_00.png", 37)
    assert set(pixels[3].unique().tolist()) <= {0, 2, 255}


def test_default_augmentation_flips_but_never_resamples(tmp_path):
    # zoom and rotation are off by default (they cost Dice on bench/segment.py's
    # scenes): a training mask is the decoded mask or its mirror, pixel for pixel
    root = make_segmentation_folder(tmp_path / "d", n=8, noise=0)
    dls = SegmentationDataLoaders.from_folder(root, size=(40, 56), **FAST)
    order = list(EpochShuffle(len(dls.train_items), dls.seed))
    seen = {"same": 0, "mirrored": 0}
    for b, (_, y) in enumerate(dls.train.batches(0)):
        for i, mask in enumerate(y):
            item = dls.train_items[order[b * dls.bs + i]]
            decoded = decode_pair(*item, (40, 56))[3].long()
            same, mirrored = torch.equal(mask, decoded), torch.equal(mask, decoded.flip(-1))
            assert same or mirrored
            seen["same" if same else "mirrored"] += 1
    assert seen["same"] and seen["mirrored"]  # flips still happen
    # zoom and rotation are there when asked for
    dls = SegmentationDataLoaders.from_folder(root, size=(40, 56), max_rotate=20.0, **FAST)
    _, y = next(dls.train.batches(0))
    first = decode_pair(*dls.train_items[order[0]], (40, 56))[3].long()
    assert not torch.equal(y[0], first) and not torch.equal(y[0], first.flip(-1))


def test_lighting_changes_images_only():
    x, y = _scenes(6, 40, 40)
    kw = {"extent": (0.8, 0.8), "max_rotate": 20.0}
    xa, ya = batch_augment_masks(
        x, y, 32, generator=torch.Generator().manual_seed(1), max_lighting=0.3, **kw
    )
    xb, yb = batch_augment_masks(
        x, y, 32, generator=torch.Generator().manual_seed(1), max_lighting=0.0, **kw
    )
    assert torch.equal(ya, yb) and not torch.allclose(xa, xb)


def test_a_shard_of_the_draws_augments_as_the_whole_batch():
    x, y = _scenes(6, 40, 56)
    kw = {"extent": (0.75, 0.5), "max_rotate": 15.0}
    xa, ya = batch_augment_masks(x, y, 28, generator=torch.Generator().manual_seed(5), **kw)
    xs, ys = batch_augment_masks(
        x[2:5], y[2:5], 28, generator=torch.Generator().manual_seed(5), draw=(6, slice(2, 5)), **kw
    )
    assert torch.equal(xs, xa[2:5]) and torch.equal(ys, ya[2:5])


# -- batches, settings ----------------------------------------------------------------


def test_batch_formats_and_the_central_crop_without_augmentation(tmp_path):
    root = make_segmentation_folder(tmp_path / "d", n=10)
    dls = SegmentationDataLoaders.from_folder(root, size=(48, 72), crop=(32, 40), **FAST)
    assert dls.vocab == list(SEG_CODES) and dls.c == 4 and dls.task.name == "segmentation"
    assert (dls.size, dls.crop, dls.presize, dls.crop_pct) == ((48, 72), (32, 40), (48, 72), 1.0)
    x, y = dls.one_batch()
    assert x.shape == (4, 3, 32, 40) and x.dtype == torch.float32
    assert y.shape == (4, 32, 40) and y.dtype == torch.long
    assert abs(x.mean().item()) < 2 and x.std().item() > 0.3  # normalised
    xv, yv = next(iter(dls.valid))
    assert xv.shape == (2, 3, 48, 72) and yv.shape == (2, 48, 72)
    dls.augment = False
    _, y0 = next(dls.train.batches(0))
    first = dls.train_items[next(iter(EpochShuffle(len(dls.train_items), dls.seed)))]
    expected = center_crop(decode_pair(*first, (48, 72))[3], (32, 40)).long()
    assert torch.equal(y0[0], expected)


def test_sizes_crops_and_the_model_file_fields(tmp_path):
    root = make_segmentation_folder(tmp_path / "d", n=6)
    dls = SegmentationDataLoaders.from_folder(root, size=(48, 72), crop=32, **FAST)
    dls.set_size((24, 36))  # the crop keeps its fraction of the size
    assert (dls.size, dls.crop) == ((24, 36), 16)
    dls.set_size((48, 72), crop=(48, 64))
    assert dls.train.settings.preprocessing.crop == (48, 64)
    dls.crop = None  # whole images
    assert dls.crop == (48, 72)
    assert dls.one_batch()[0].shape[-2:] == (48, 72)
    new = dls.with_preprocessing(dls.preprocessing.replace(mean=(0.5, 0.5, 0.5)))
    assert new.crop == dls.crop and new.train_items is dls.train_items
    cfg = Preprocessing((1400, 2100), crop=512, crop_pct=1.0).to_config()
    assert cfg["crop"] == 512 and Preprocessing.from_config(cfg).crop == 512
    with pytest.raises(SnugfitError, match="crop: must fit in size"):
        dls.crop = (64, 64)
    with pytest.raises(SnugfitError, match="crop_pct: must be 1 with a crop"):
        dls.crop_pct = 0.875
    with pytest.raises(SnugfitError, match="presize: not used with a crop"):
        dls.presize = 80


def test_show_batch_overlays_the_masks(tmp_path):
    root = make_segmentation_folder(tmp_path / "d", n=6)
    dls = SegmentationDataLoaders.from_folder(root, size=(48, 72), crop=32, **FAST)
    for split in ("train", "valid"):
        out = dls.show_batch(tmp_path / f"{split}.png", split=split)
        with Image.open(out) as img:
            assert img.format == "PNG" and img.size[0] > 100


def test_worker_processes_decode_pairs(tmp_path):
    root = make_segmentation_folder(tmp_path / "d", n=8, noise=0)
    dls = SegmentationDataLoaders.from_folder(
        root, size=(48, 72), crop=32, cache=False, max_lighting=0.0, **{**FAST, "num_workers": 2}
    )
    batches = list(dls.train)
    assert sum(len(y) for _, y in batches) == len(dls.train_items)
    _, agree = _agreement(_as_rgb(batches[0][0], dls.mean, dls.std), batches[0][1].numpy())
    assert agree > 0.999


# -- classes and splits -----------------------------------------------------------------


def test_classes_numbered_from_the_masks_without_codes(tmp_path):
    root = make_segmentation_folder(tmp_path / "d", n=8, codes=None)
    dls = SegmentationDataLoaders.from_folder(root, size=32, **FAST)
    assert dls.vocab == ["class_0", "class_1", "class_2", "class_3"]
    assert check_segmentation(root, workers=1).classes == dls.vocab


def test_codes_txt_problems_are_one_line(tmp_path):
    root = make_segmentation_folder(tmp_path / "d", n=6)
    (root / "codes.txt").write_text("sky\n\nroad\n")
    with pytest.raises(SnugfitError, match=r"codes.txt, line 2: empty class name"):
        SegmentationDataLoaders.from_folder(root, size=32, **FAST)
    (root / "codes.txt").write_text("sky\n")
    with pytest.raises(SnugfitError, match="found only one class"):
        SegmentationDataLoaders.from_folder(root, size=32, **FAST)


def test_valid_txt_names_the_validation_images(tmp_path):
    names = ["scene_01.png", "scene_04.png", "scene_07.png"]
    root = make_segmentation_folder(tmp_path / "d", n=10, valid=names)
    dls = SegmentationDataLoaders.from_folder(root, size=32, **FAST)
    assert sorted(p.name for p, _ in dls.valid_items) == names
    assert all(m.name == p.with_suffix(".png").name for p, m in dls.train_items)
    assert check_segmentation(root, workers=1).layout == "valid.txt"
    forced = SegmentationDataLoaders.from_folder(root, size=32, valid_pct=0.5, **FAST)
    assert len(forced.valid_items) == 5  # valid_pct given: a random split instead


def test_valid_txt_names_of_no_image_are_reported_and_ignored(tmp_path, caplog):
    root = make_segmentation_folder(tmp_path / "d", n=10, valid=["scene_01.png"])
    (root / "masks" / "scene_02.png").unlink()  # listed below: reported as without a mask
    (root / "valid.txt").write_text("scene_01.png\nnope.png\nscene_02\nscene_03.png\n")
    with caplog.at_level(logging.WARNING, logger="snugfit"):
        dls = SegmentationDataLoaders.from_folder(root, size=32, **FAST)
    assert sorted(p.name for p, _ in dls.valid_items) == ["scene_01.png", "scene_03.png"]
    assert len(dls.train_items) == 7  # 10 images, one without a mask, two validating
    warned = [r.getMessage() for r in caplog.records if "valid.txt" in r.getMessage()]
    assert warned == [
        f"{root / 'valid.txt'}: 1 name(s) of no image, ignored "
        "(e.g. line 2 names 'nope.png': no such image in images/)"
    ]
    report = check_segmentation(root, workers=1)
    unknown = [p for p in report.issues if p.kind == "unknown name"]
    assert [(p.path, p.reason) for p in unknown] == [
        (str(root / "valid.txt"), "line 2 names 'nope.png': no such image in images/")
    ]
    assert [p.path for p in report.issues if p.kind == "no mask"] == [
        str(root / "images" / "scene_02.png")
    ]
    heads = [head for head, _ in problem_groups(report.to_dict())]
    assert "names in the validation list that are no image: 1, ignored" in heads
    (root / "valid.txt").write_text("nope.png\nscene_02.png\n")
    with pytest.raises(
        SnugfitError,
        match=r"valid.txt: names no image with a mask in .*images \(line 1: 'nope.png'\)",
    ):
        SegmentationDataLoaders.from_folder(root, size=32, **FAST)


def test_random_split_is_seeded_and_the_check_splits_the_same(tmp_path):
    root = make_segmentation_folder(tmp_path / "d", n=20)

    def valid(seed: int) -> list[str]:
        dls = SegmentationDataLoaders.from_folder(root, size=32, seed=seed, **FAST)
        return sorted(p.name for p, _ in dls.valid_items)

    assert len(valid(1)) == 4 and valid(1) == valid(1) and valid(1) != valid(2)
    report = check_segmentation(root, seed=2, workers=1)
    assert sorted(p.name for p, _ in report.split.valid) == valid(2)


def test_from_label_func(tmp_path):
    root = make_segmentation_folder(tmp_path / "d", n=10, codes=None)
    (root / "labels").mkdir()
    for mask in (root / "masks").iterdir():  # CamVid's names: <stem>_P.png elsewhere
        mask.rename(root / "labels" / f"{mask.stem}_P.png")
    (root / "labels" / "scene_09_P.png").unlink()
    files = sorted((root / "images").iterdir())
    dls = SegmentationDataLoaders.from_label_func(
        root, files, lambda p: root / "labels" / f"{p.stem}_P.png", codes=list(SEG_CODES),
        valid_pct=0.25, seed=3, size=(48, 72), crop=32, **FAST,
    )  # fmt: skip
    assert dls.vocab == list(SEG_CODES)
    assert len(dls.train_items) + len(dls.valid_items) == 9
    assert "scene_09_P.png not found" in dls.skipped[str(root / "images" / "scene_09.png")]
    x, y = dls.one_batch()
    assert x.shape == (4, 3, 32, 32) and y.shape == (4, 32, 32)
    with pytest.raises(SnugfitError, match="label_func failed"):
        SegmentationDataLoaders.from_label_func(root, files, lambda p: 1 / 0, size=32, **FAST)


# -- the data check: each problem one line naming its file --------------------------------


def _colour(h: int = 48, w: int = 72) -> np.ndarray:
    """An RGB mask whose channels differ at one pixel: colours, not class indices."""
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[0, 0, 2] = 1
    return rgb


def _bad_colour_mask(root: Path) -> str:
    Image.fromarray(_colour()).save(root / "masks" / "scene_02.png")
    return "masks/scene_02.png: colour (RGB) mask, its channels differ"


def _bad_16bit_mask(root: Path) -> str:
    Image.fromarray(np.zeros((48, 72), np.uint16)).save(root / "masks" / "scene_02.png")
    return "masks/scene_02.png: 16-bit (I;16) mask"


def _bad_size(root: Path) -> str:
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(root / "masks" / "scene_02.png")
    return "images/scene_02.png: image is 72x48 but its mask masks/scene_02.png is 40x40"


def _bad_values(root: Path) -> str:
    values = np.zeros((48, 72), np.uint8)
    values[0, :3] = [7, 9, 255]
    Image.fromarray(values).save(root / "masks" / "scene_02.png")
    return "masks/scene_02.png: values 7, 9 are not classes (0-3) or void (255)"


def _no_mask(root: Path) -> str:
    (root / "masks" / "scene_02.png").unlink()
    return "images/scene_02.png: no mask (masks/scene_02.png not found)"


def _webp_mask(root: Path) -> str:
    mask = root / "masks" / "scene_02.png"
    Image.open(mask).save(root / "masks" / "scene_02.webp")
    mask.unlink()
    return (
        "images/scene_02.png: no mask (masks/scene_02.png not found; masks/scene_02.webp is "
        "not a mask format (PNG, TIFF, BMP or GIF; JPEG for binary masks))"
    )


def _unreadable_image(root: Path) -> str:
    (root / "images" / "scene_02.png").write_bytes(b"not a png")
    return "images/scene_02.png: not an image"


def _truncated_mask(root: Path) -> str:
    mask = root / "masks" / "scene_02.png"
    mask.write_bytes(mask.read_bytes()[:60])
    return "masks/scene_02.png: "


BAD = {
    "colour mask": (_bad_colour_mask, "mask format"),
    "16-bit mask": (_bad_16bit_mask, "mask format"),
    "size mismatch": (_bad_size, "size"),
    "values": (_bad_values, "values"),
    "no mask": (_no_mask, "no mask"),
    "webp mask": (_webp_mask, "no mask"),
    "unreadable image": (_unreadable_image, "unreadable"),
    "truncated mask": (_truncated_mask, "unreadable"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_each_bad_pair_is_one_line_naming_its_file_and_is_skipped(tmp_path, case, caplog):
    root = make_segmentation_folder(tmp_path / "d", n=8, sizes=((48, 72),))
    make, kind = BAD[case]
    expected = make(root)
    report = check_segmentation(root, workers=1)
    image = str(root / "images" / "scene_02.png")
    assert [(p.kind, p.image) for p in report.issues] == [(kind, image)]
    assert report.usable == 7 and list(report.unreadable_files) == [image]
    lines = [line for line in report.lines() if line.startswith("  ")]
    assert len(lines) == 1 and lines[0].strip().startswith(expected)
    # Loaders built without the check skip it too (at construction or when decoding),
    # with the same reason.
    dls = SegmentationDataLoaders.from_folder(root, size=(48, 72), crop=32, **FAST)
    for _ in dls.train:
        pass
    for _ in dls.valid:
        pass
    assert dls.skipped == report.unreadable_files
    # one warning, with the reason as it is: an image without a mask is not "unreadable"
    said = [r.getMessage() for r in caplog.records if r.name == "snugfit"]
    assert said == [f"skipping {image}: {dls.skipped[image]}"]


def test_masks_in_any_lossless_format_pair_with_their_images(tmp_path):
    """Satellite and medical sets ship .tif masks: TIFF, BMP and GIF masks are read as
    PNG ones are; a second mask of one name is reported as unused, never paired."""
    root = make_segmentation_folder(tmp_path / "d", n=8, sizes=((48, 72),))
    png = {i: open_mask(root / "masks" / f"scene_{i:02d}.png") for i in range(8)}
    for i, suffix in [(1, ".tif"), (2, ".tiff"), (3, ".bmp"), (4, ".GIF")]:
        mask = root / "masks" / f"scene_{i:02d}.png"
        Image.open(mask).save(mask.with_suffix(suffix), optimize=False)  # GIF: no palette reorder
        mask.unlink()
    extra = root / "masks" / "scene_05.tif"  # scene_05.png stays its mask
    Image.fromarray(np.zeros((48, 72), np.uint8)).save(extra)
    report = check_segmentation(root, workers=1)
    assert report.usable == 8
    pairs = dict(report.split.train + report.split.valid)
    assert pairs[root / "images" / "scene_01.png"].name == "scene_01.tif"
    assert pairs[root / "images" / "scene_04.png"].name == "scene_04.GIF"
    assert pairs[root / "images" / "scene_05.png"].name == "scene_05.png"
    for image, mask in pairs.items():
        i = int(image.stem[-2:])
        assert np.array_equal(open_mask(mask), png[i]), mask
    assert [(p.kind, p.path, p.reason) for p in report.issues] == [
        ("no image", str(extra), "a second mask of this name (scene_05.png is used)")
    ]
    dls = SegmentationDataLoaders.from_folder(root, size=(48, 72), crop=32, **FAST)
    assert len(dls.train_items) + len(dls.valid_items) == 8 and not dls.skipped


def test_masks_without_images_and_absent_classes_are_reported(tmp_path):
    root = make_segmentation_folder(tmp_path / "d", n=8, codes=(*SEG_CODES, "boat"))
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "masks" / "lost.png")
    report = check_segmentation(root, workers=1)
    assert report.absent == ["boat"] and report.usable == 8
    text = "\n".join(report.lines())
    assert "masks/lost.png: no image of this name in images/" in text
    assert "absent from the training masks: 'boat'" in text
    shares = report.shares("train")
    assert shares["boat"] == 0 and abs(sum(shares.values()) - 1) < 1e-9
    assert sum(report.pixels["train"].values()) == sum(
        open_mask(m).size for _, m in report.split.train
    )


def test_report_json_and_html_pieces(tmp_path):
    root = make_segmentation_folder(tmp_path / "d", n=8)
    _bad_values(root)
    report = check_segmentation(root, workers=1)
    data = json.loads(report.to_json(tmp_path / "check.json").read_text())
    assert data["task"] == "segmentation" and data["usable"] == 7 and "split" not in data
    assert data["classes"] == list(SEG_CODES) and len(data["unreadable"]) == 1
    assert "classes from codes.txt" in describe(data)
    [(head, items)] = problem_groups(data)
    assert head.startswith("masks with values") and "scene_02.png" in items[0]


def _all_masks_colour(root: Path) -> None:
    for mask in (root / "masks").iterdir():
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(mask)


def _only_validation_mask_empty(root: Path) -> None:
    (root / "valid.txt").write_text("scene_00.png\n")
    (root / "masks" / "scene_00.png").write_bytes(b"")


def _no_masks(root: Path) -> None:
    for mask in (root / "masks").iterdir():
        mask.unlink()


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (_all_masks_colour, "no readable image/mask pair"),
        (_only_validation_mask_empty, "the validation set is empty (no readable image/mask pair)"),
        (_no_masks, "no image with a mask"),
    ],
    ids=["no readable pair", "empty validation set", "no masks"],
)
def test_fatal_problems_are_one_line(tmp_path, capsys, make, expected):
    root = make_segmentation_folder(tmp_path / "d", n=6)
    make(root)
    code = main(["check", str(root)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("snugfit: error: ")
    assert str(root) in err[0] and expected in err[0]
    with pytest.raises(SnugfitError, match=re.escape(expected)):
        SegmentationDataLoaders.from_folder(root, size=32, **FAST)


def test_snugfit_check_recognises_a_segmentation_folder(tmp_path, capsys):
    root = make_segmentation_folder(tmp_path / "d", n=6)
    code = main(["check", str(root), "--json", str(tmp_path / "c.json")])
    out = capsys.readouterr().out
    assert code == 0 and "segmentation: images/ and masks/" in out
    assert "train pixels" in out and "background" in out and "no problems found" in out
    assert json.loads((tmp_path / "c.json").read_text())["task"] == "segmentation"


# -- one pass: from_check, and the cache ----------------------------------------------------


def test_from_check_opens_no_file_again(tmp_path, monkeypatch):
    root = make_segmentation_folder(tmp_path / "d", n=10)
    _bad_size(root)
    report = check_segmentation(root, valid_pct=0.3, seed=5, workers=1)

    def refuse(*args):
        raise AssertionError(f"{args}: header opened again")

    monkeypatch.setattr(snugfit.data.segmentation, "pair_header_problem", refuse)
    monkeypatch.setattr(snugfit.data.segmentation, "scan_masks", refuse)
    opened: list[Path] = []
    real_open = Image.open
    monkeypatch.setattr(
        Image, "open", lambda p, *a, **k: opened.append(Path(p)) or real_open(p, *a, **k)
    )
    dls = SegmentationDataLoaders.from_check(report, size=(48, 72), crop=32, **FAST)
    assert opened == []
    assert dls.seed == 5 and dls.vocab == report.classes
    assert dls.skipped == report.unreadable_files and len(dls.skipped) == 1
    used = {str(p) for p, _ in dls.train_items + dls.valid_items}
    assert len(used) == report.usable and not used & dls.skipped.keys()
    assert (dls.train_items, dls.valid_items) == (
        [p for p in report.split.train if str(p[0]) not in dls.skipped],
        [p for p in report.split.valid if str(p[0]) not in dls.skipped],
    )
    x, y = dls.one_batch()
    assert x.shape == (4, 3, 32, 32) and y.shape == (4, 32, 32)


def test_the_cache_serves_masks_from_the_second_epoch(tmp_path, monkeypatch):
    root = make_segmentation_folder(tmp_path / "d", n=10)
    decoded: list[str] = []
    real = snugfit.data.seg_loader.decode_pair

    def counting(image, mask, *args):
        decoded.append(Path(mask).name)
        return real(image, mask, *args)

    monkeypatch.setattr(snugfit.data.seg_loader, "decode_pair", counting)
    dls = SegmentationDataLoaders.from_folder(root, size=(48, 72), crop=32, **FAST)
    first = [y for _, y in dls.train]
    assert len(decoded) == 8 and dls.cache_stats()["misses"] == 8
    decoded.clear()
    second = [y for _, y in dls.train]
    assert decoded == [] and dls.cache_stats()["hits"] == 8
    assert sum(len(y) for y in second) == sum(len(y) for y in first) == 8
    # Image and mask are two entries, each keyed by its own file: an edited mask alone
    # is decoded again, with its new values.
    ds = dls.train.dataset
    image_key, mask_key = ds.cache_key(0)
    assert dls.cache.path_for(image_key).is_file() and dls.cache.path_for(mask_key).is_file()
    mask = Path(ds.label(0))
    Image.fromarray(np.full(open_mask(mask).shape, 3, np.uint8)).save(mask)
    list(dls.train)
    assert decoded == [mask.name]
    image_key2, mask_key2 = ds.cache_key(0)
    assert image_key2 == image_key and mask_key2 != mask_key
    assert (ds.load(0)[3] == 3).all()


def test_decode_pair_reasons_name_the_mask(tmp_path):
    root = make_segmentation_folder(tmp_path / "d", n=2, sizes=((48, 72),))
    image, mask = root / "images" / "scene_00.png", root / "masks" / "scene_00.png"
    Image.fromarray(_colour()).save(mask)
    with pytest.raises(UnreadableImage) as e:
        decode_pair(image, mask, 32)
    assert e.value.path == str(image) and f"mask {mask}: colour (RGB) mask" in e.value.reason


def test_a_grey_mask_saved_as_rgb_is_read_as_its_one_channel(tmp_path):
    """OpenCV and image editors often write a greyscale mask as RGB with three equal
    channels: that is read as the mask it is; a check and the loaders use it."""
    root = make_segmentation_folder(tmp_path / "d", n=8, sizes=((48, 72),))
    mask = root / "masks" / "scene_03.png"
    values = open_mask(mask)
    Image.fromarray(np.repeat(values[:, :, None], 3, axis=2), "RGB").save(mask)
    assert Image.open(mask).mode == "RGB"
    assert np.array_equal(open_mask(mask), values)
    report = check_segmentation(root, workers=1)
    assert report.usable == 8 and not report.issues
    image = root / "images" / "scene_03.png"
    assert torch.equal(decode_pair(image, mask, (48, 72))[3], torch.from_numpy(values))


@pytest.mark.parametrize("mode", ["LA", "RGBA"])
def test_an_opaque_alpha_channel_is_dropped_a_transparent_one_refused(tmp_path, mode):
    """Image editors and annotation tools export masks with an alpha channel: when every
    pixel is opaque the mask is read as without it; a transparent pixel could mean
    background or unlabelled, so such a mask is refused, by name, and its pair skipped."""
    root = make_segmentation_folder(tmp_path / "d", n=8, sizes=((48, 72),))
    mask, other = root / "masks" / "scene_03.png", root / "masks" / "scene_05.png"
    values = open_mask(mask)
    base = {"LA": "L", "RGBA": "RGB"}[mode]
    Image.fromarray(values, "L").convert(base).convert(mode).save(mask)
    see_through = Image.fromarray(open_mask(other), "L").convert(base).convert(mode)
    alpha = np.full(values.shape, 255, np.uint8)
    alpha[:3] = 0
    see_through.putalpha(Image.fromarray(alpha))
    see_through.save(other)
    assert Image.open(mask).mode == Image.open(other).mode == mode
    assert np.array_equal(open_mask(mask), values)
    with pytest.raises(UnreadableImage, match=rf"alpha channel \({mode}\), 6.2% of it not opaque"):
        open_mask(other)
    report = check_segmentation(root, workers=1)
    assert report.usable == 7 and [Path(i.path).name for i in report.issues] == [other.name]
