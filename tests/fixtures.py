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
