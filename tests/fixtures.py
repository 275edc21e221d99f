"""Tiny generated data shared by the tests.

Images are coloured so that their class can be read from the pixels: class k is
dominated by colour ``COLOURS[k]`` plus noise, so a model (or a test) can check
that labels stay aligned with images through loading and augmentation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = [(220, 40, 40), (40, 200, 60), (40, 60, 220), (200, 200, 40)]
HYMENOPTERA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hymenoptera_data"


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
