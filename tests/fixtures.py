"""Tiny generated data shared by the tests.

Images are coloured so that their class can be read from the pixels: class k is
dominated by colour ``COLOURS[k]`` plus noise, so a model (or a test) can check
that labels stay aligned with images through loading and augmentation.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = [(220, 40, 40), (40, 200, 60), (40, 60, 220), (200, 200, 40)]
HYMENOPTERA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hymenoptera_data"


def loaders_and_warnings(folder: Path, caplog):
    """``ImageDataLoaders.from_folder(folder)`` (no workers, no pixel cache) and the
    warnings the ``snugfit`` logger gave while building them."""
    from snugfit.data.loaders import ImageDataLoaders

    caplog.set_level(logging.WARNING, logger="snugfit")
    dls = ImageDataLoaders.from_folder(folder, num_workers=0, cache=False)
    return dls, [r.getMessage() for r in caplog.records]


def colour_image(k: int, rng: np.random.Generator, size=(40, 32)) -> Image.Image:
    """An RGB image of class ``k``: its colour plus a little noise."""
    w, h = size
    base = np.array(COLOURS[k], dtype=np.int16)
    noise = rng.integers(-25, 26, size=(h, w, 3), dtype=np.int16)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def make_image_folder(
    root: Path,
    classes=("red", "green"),
    n_train: int = 8,
    n_valid: int = 4,
    valid_name: str | None = "val",
    seed: int = 0,
    ext: str = ".jpg",
) -> Path:
    """Write an ImageNet-layout folder ``root/{train,<valid_name>}/<class>/*.jpg``.

    With ``valid_name=None`` all images go to ``root/<class>/`` (no split on disk).
    Image sizes vary so that resizing is exercised. Returns ``root``.
    """
    rng = np.random.default_rng(seed)
    splits = [("train", n_train)] + ([(valid_name, n_valid)] if valid_name else [])
    for split, n in splits:
        for k, cls in enumerate(classes):
            d = root / split / cls if valid_name else root / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n if valid_name else n_train + n_valid):
                size = (int(rng.integers(24, 64)), int(rng.integers(24, 64)))
                colour_image(k, rng, size).save(d / f"{cls}_{split}_{i}{ext}")
    return root


# Multi-label: class -> (colour, top-left corner of its 12x12 square). Each class's
# square has its own colour and place, so the labels can be read from the pixels
# (the colour alone suffices, so horizontal flips keep them right).
SQUARES = {"blue": ((40, 60, 220), (18, 10)), "green": ((40, 200, 60), (2, 18)),
           "red": ((220, 40, 40), (2, 2))}  # fmt: skip


def make_multilabel_csv(root: Path, n: int = 120, seed: int = 0, p: float = 0.5) -> Path:
    """Write ``n`` 32x32 PNGs on a grey noisy background with each class's square
    present with probability ``p``, and ``root/labels.csv`` (``fname,labels``) with
    the classes present separated by spaces (an empty cell when none). Returns ``root``.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        img = 128 + rng.integers(-20, 21, size=(32, 32, 3))
        present = [c for c in SQUARES if rng.random() < p]
        for c in present:
            colour, (top, left) = SQUARES[c]
            noise = rng.integers(-20, 21, size=(12, 12, 3))
            img[top : top + 12, left : left + 12] = np.array(colour) + noise
        name = f"img_{i:03d}.png"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB").save(root / name)
        rows.append(f"{name},{' '.join(present)}\n")
    (root / "labels.csv").write_text("fname,labels\n" + "".join(rows))
    return root


# Segmentation: class k is drawn in SEG_COLOURS[k] (plus noise), void in VOID_COLOUR,
# so a mask can be computed from an image's own pixels (`classes_of_pixels`), and
# checked again after any transform that moves image and mask together.
SEG_CODES = ("background", "red", "green", "yellow")
SEG_COLOURS = [(40, 60, 220), (220, 40, 40), (40, 200, 60), (210, 210, 40)]
VOID_COLOUR = (128, 128, 128)


def classes_of_pixels(rgb: np.ndarray) -> np.ndarray:
    """``(H, W)`` uint8: each pixel's nearest class colour (255 for the void grey)."""
    palette = np.array([*SEG_COLOURS, VOID_COLOUR], dtype=np.float64)
    d = ((rgb[..., None, :].astype(np.float64) - palette) ** 2).sum(-1)
    labels = d.argmin(-1).astype(np.uint8)
    labels[labels == len(SEG_COLOURS)] = 255
    return labels


def seg_scene(
    rng: np.random.Generator, h: int, w: int, void: bool = True, noise: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """An RGB scene (uint8 ``(h, w, 3)``): shapes of classes 1-3 (and a void patch) on the
    background class, plus noise up to ``noise``; and its mask, computed from those pixels."""
    labels = np.zeros((h, w), dtype=np.uint8)
    yy, xx = np.mgrid[:h, :w]
    for _ in range(int(rng.integers(3, 6))):
        k = int(rng.integers(1, len(SEG_COLOURS)))
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(0.12, 0.3) * h, rng.uniform(0.12, 0.3) * w
        if rng.random() < 0.5:
            inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        else:
            inside = (abs(yy - cy) <= ry) & (abs(xx - cx) <= rx)
        labels[inside] = k
    if void:
        top, left = int(rng.integers(0, h - h // 6)), int(rng.integers(0, w - w // 6))
        labels[top : top + h // 6, left : left + w // 6] = 255
    palette = np.array([*SEG_COLOURS, *[VOID_COLOUR] * (256 - len(SEG_COLOURS))], np.int16)
    jitter = rng.integers(-noise, noise + 1, size=(h, w, 3), dtype=np.int16)
    rgb = np.clip(palette[labels] + jitter, 0, 255).astype(np.uint8)
    return rgb, classes_of_pixels(rgb)


def make_segmentation_folder(
    root: Path,
    n: int = 10,
    sizes=((48, 72), (60, 90)),
    codes=SEG_CODES,
    valid: list[str] | None = None,
    seed: int = 0,
    ext: str = ".png",
    noise: int = 20,
) -> Path:
    """Write ``root/images/scene_<i><ext>`` and ``root/masks/scene_<i>.png`` (image sizes
    cycling through ``sizes``, each ``(height, width)``), ``root/codes.txt`` when
    ``codes`` and ``root/valid.txt`` listing ``valid`` when given. Returns ``root``."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        rgb, mask = seg_scene(rng, h, w, noise=noise)
        Image.fromarray(rgb, "RGB").save(root / "images" / f"scene_{i:02d}{ext}")
        Image.fromarray(mask, "L").save(root / "masks" / f"scene_{i:02d}.png")
    if codes:
        (root / "codes.txt").write_text("".join(f"{c}\n" for c in codes))
    if valid is not None:
        (root / "valid.txt").write_text("".join(f"{v}\n" for v in valid))
    return root
