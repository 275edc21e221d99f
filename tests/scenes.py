"""Generated segmentation scenes: textured shapes pasted on real photos.

Each scene is a photo (hymenoptera's, from ../shared/data, resized; random noise
when the folder is absent) with one to four shapes pasted on it. A class is a kind of
shape with its own texture and hue range (circle: stripes, square: checks, triangle:
speckles), so a model must read shape and texture, not one colour. Masks hold the
class per pixel (0: the photo), with a one-pixel void (255) border around each shape,
as Pascal VOC marks uncertain edges. Written as a segmentation folder:
``images/``, ``masks/``, ``codes.txt`` and ``valid.txt``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CODES = ["background", "circle", "square", "triangle"]
PHOTOS = Path(__file__).resolve().parents[1].parent / "shared/data/hymenoptera_data"


def _texture(k: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    hue = {1: (200, 60, 60), 2: (60, 180, 80), 3: (70, 90, 210)}[k]
    base = np.clip(np.array(hue) + rng.integers(-40, 41, 3), 0, 255)
    yy, xx = np.mgrid[0:h, 0:w]
    if k == 1:  # stripes
        pattern = ((yy // int(rng.integers(2, 5))) % 2)[..., None]
    elif k == 2:  # checks
        s = int(rng.integers(3, 6))
        pattern = (((yy // s) + (xx // s)) % 2)[..., None]
    else:  # speckles
        pattern = (rng.random((h, w)) < 0.35)[..., None]
    img = base * (0.6 + 0.4 * pattern) + rng.normal(0, 8, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _shape_mask(k: int, h: int, w: int, rng: np.random.Generator) -> Image.Image:
    m = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(m)
    r = int(rng.integers(min(h, w) // 10, min(h, w) // 4))
    cx, cy = int(rng.integers(r, w - r)), int(rng.integers(r, h - r))
    if k == 1:
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif k == 2:
        d.rectangle((cx - r, cy - r, cx + r, cy + r), fill=255)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=255)
    return m


def _photos() -> list[Path]:
    if not PHOTOS.is_dir():
        return []
    return sorted(PHOTOS.rglob("*.jpg"))


def scene(size: tuple[int, int], rng: np.random.Generator, photos: list[Path]):
    """One ``(image, mask)`` pair of uint8 arrays, ``(h, w, 3)`` and ``(h, w)``."""
    h, w = size
    if photos:
        photo = Image.open(photos[int(rng.integers(len(photos)))]).convert("RGB")
        img = np.array(photo.resize((w, h), Image.BILINEAR))
    else:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(1, 5))):
        k = int(rng.integers(1, 4))
        m = np.array(_shape_mask(k, h, w, rng)) > 127
        img[m] = _texture(k, h, w, rng)[m]
        edge = (
            np.array(Image.fromarray(m.astype(np.uint8) * 255).filter(ImageFilter.FIND_EDGES)) > 0
        )
        mask[m] = k
        mask[edge] = 255
    return img, mask


def write_scenes(root: Path, n_train: int, n_valid: int, size=(96, 144), seed: int = 0) -> Path:
    """Write a segmentation folder of generated scenes (see the module docstring)."""
    rng = np.random.default_rng(seed)
    photos = _photos()
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    valid = []
    for i in range(n_train + n_valid):
        img, mask = scene(size, rng, photos)
        name = f"scene_{i:04d}"
        Image.fromarray(img).save(root / "images" / f"{name}.jpg", quality=92)
        Image.fromarray(mask, "L").save(root / "masks" / f"{name}.png")
        if i >= n_train:
            valid.append(f"{name}.jpg")
    (root / "codes.txt").write_text("\n".join(CODES) + "\n")
    (root / "valid.txt").write_text("\n".join(valid) + "\n")
    return root
