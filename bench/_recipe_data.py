"""The data sets of bench/recipe.py, each written as ``root/train/<class>/`` and
``root/val/<class>/`` so that every method sees the same split.

- hymenoptera with neutral class names: the photos' class folders symlinked as
  ``kind_a`` (ants) and ``kind_b`` (bees), so no head starts from ImageNet's rows;
- hymenoptera as shipped (ants, bees: ImageNet classes);
- scikit-learn's digits (1,797 scans of 8x8 at 17 grey levels) upscaled to 64 px
  (bicubic), split 80/20 per class with a fixed seed;
- textures: 48-px patches of six grey photos bundled with scikit-image (brick,
  grass, gravel, the moon's surface, a cell micrograph, an immunohistochemistry
  slide in grey), one class per photo. Each photo's top-left 480x480 is a 10x10
  grid of patches: rows 0-5 train (60 per class), row 6 is left out, rows 7-9
  validate (30 per class), so a validation patch is never a near-copy of a
  training one. Grey everywhere: colour alone does not give the class away.

Each builder returns the folder, or raises `Missing` with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

HYMENOPTERA = Path(__file__).resolve().parents[1].parent / "shared/data/hymenoptera_data"
NEUTRAL = {"ants": "kind_a", "bees": "kind_b"}
TEXTURES = ("brick", "grass", "gravel", "moon", "cell", "immunohistochemistry")
PATCH, GRID, TRAIN_ROWS, GAP = 48, 10, 6, 1


class Missing(Exception):
    """A data set's source is not on this machine."""


@dataclass(frozen=True)
class Dataset:
    key: str  # --datasets name
    title: str  # the table's name
    size: int  # training size
    flip: bool  # random horizontal flips
    source: str  # "hymenoptera", "digits", "textures": fastai ignores class names,
    # so two data sets from one source with the same files train fastai identically


DATASETS = (
    Dataset("hym-neutral", "hymenoptera (neutral names)", 224, True, "hymenoptera"),
    Dataset("hym-imagenet", "hymenoptera (ImageNet names: head start)", 224, True, "hymenoptera"),
    Dataset("digits", "digits @ 64 px", 64, False, "digits"),  # a mirrored 2 is no 2
    Dataset("textures", "textures (scikit-image photos) @ 64 px", 64, True, "textures"),
)


def build(key: str, root: Path, hymenoptera: Path) -> Path:
    """Write data set ``key`` under ``root``; returns its folder."""
    if key.startswith("hym-") and not hymenoptera.is_dir():
        raise Missing(f"{hymenoptera} not found (--hymenoptera PATH)")
    if key == "hym-neutral":
        return neutral_hymenoptera(hymenoptera, root / key)
    if key == "hym-imagenet":
        return hymenoptera
    return {"digits": write_digits, "textures": write_textures}[key](root / key)


def neutral_hymenoptera(src: Path, dst: Path) -> Path:
    """``src``'s split with the class folders symlinked under neutral names."""
    for split in ("train", "val"):
        (dst / split).mkdir(parents=True)
        for name, neutral in NEUTRAL.items():
            (dst / split / neutral).symlink_to((src / split / name).resolve())
    return dst


def split_per_class(labels: np.ndarray, valid_pct: float, seed: int) -> np.ndarray:
    """A stratified split: True marks validation, ``round(valid_pct * n)`` per class.

    >>> split_per_class(np.array([0] * 10 + [1] * 5), 0.2, 0).reshape(3, 5).sum(1).tolist()
    [1, 1, 1]
    """
    rng = np.random.default_rng(seed)
    valid = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        valid[idx[: round(valid_pct * len(idx))]] = True
    return valid


def write_digits(dst: Path, side: int = 64) -> Path:
    """scikit-learn's digits at ``side`` px, 80/20 per class (seed 0)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise Missing("scikit-learn is not installed") from None
    digits = load_digits()
    valid = split_per_class(digits.target, 0.2, seed=0)
    for i, (img, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        d = dst / ("val" if valid[i] else "train") / str(label)
        d.mkdir(parents=True, exist_ok=True)
        pixels = (img * (255 / 16)).round().astype(np.uint8)  # 0..16 grey levels -> 0..255
        Image.fromarray(pixels, "L").resize((side, side), Image.BICUBIC).save(d / f"{i:04d}.png")
    return dst


def texture_patches(img: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Train and validation patches of one grey photo: disjoint bands of rows.

    >>> train, valid = texture_patches(np.zeros((512, 600), np.uint8))
    >>> len(train), len(valid), train[0].shape
    (60, 30, (48, 48))
    """
    cells = [
        [img[r * PATCH : (r + 1) * PATCH, c * PATCH : (c + 1) * PATCH] for c in range(GRID)]
        for r in range(GRID)
    ]
    train = [p for row in cells[:TRAIN_ROWS] for p in row]
    valid = [p for row in cells[TRAIN_ROWS + GAP :] for p in row]
    return train, valid


def write_textures(dst: Path) -> Path:
    """Patches of scikit-image's bundled photos, one class per photo (module docstring)."""
    try:
        from skimage import data
        from skimage.color import rgb2gray
    except ImportError:
        raise Missing("scikit-image is not installed (make bench-recipe installs it)") from None
    for name in TEXTURES:
        img = getattr(data, name)()
        if img.ndim == 3:
            img = (rgb2gray(img) * 255).round().astype(np.uint8)
        for split, patches in zip(("train", "val"), texture_patches(img), strict=True):
            d = dst / split / name
            d.mkdir(parents=True)
            for i, patch in enumerate(patches):
                Image.fromarray(patch, "L").save(d / f"{i:03d}.png")
    return dst
