"""A grid of images with a title above each, saved as one PNG (`show_batch`'s picture).

The images are laid out on one canvas and drawn by one matplotlib axes, the titles
as text in a band above each image. One axes per image (``add_subplot`` sixteen
times, then ``tight_layout``) took 1.9 s for a batch of 16 at 224 px on 2 CPU cores,
most of it laying out axes nobody sees; one axes takes about 0.3 s, and it is drawn
on every `snugfit train` run.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

DPI = 80
CELL_INCHES = 2.0  # the width of one image and its gap in the picture
TITLE_BAND = 0.16  # the title band's height, a fraction of a cell's width
GAP = 0.04  # between images, a fraction of an image's width
SMALLEST_FONT = 6.0
_CHAR_WIDTH = 0.6  # a character's width in DejaVu Sans, roughly, in font sizes


def save_grid(
    images: np.ndarray, titles: Sequence[str], path: str | os.PathLike, fontsize: float = 9
) -> Path:
    """Save ``images`` (``(N, H, W, 3)`` floats in ``[0, 1]``) in a near-square grid,
    each under its title, as the PNG ``path``. A title too wide for its image is set
    smaller (down to 6 pt), then cut with an ellipsis.

    Returns:
        ``path``, as a Path.
    """
    from matplotlib.figure import Figure  # Figure alone needs no display/pyplot

    n, h, w = images.shape[:3]
    if len(titles) != n:
        raise ValueError(f"save_grid: {n} images, {len(titles)} titles")
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    gap = max(2, round(GAP * w))
    cell_w = w + gap
    band = max(4, round(TITLE_BAND * cell_w))
    cell_h = band + h + gap
    canvas = np.ones((rows * cell_h, cols * cell_w, 3), np.float32)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        top, left = r * cell_h + band, c * cell_w + gap // 2
        canvas[top : top + h, left : left + w] = np.clip(img, 0, 1)
    inches_per_pixel = CELL_INCHES / cell_w
    fig = Figure(figsize=(canvas.shape[1] * inches_per_pixel, canvas.shape[0] * inches_per_pixel))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(canvas, interpolation="antialiased")
    ax.set_axis_off()
    width_pt = w * inches_per_pixel * 72
    for i, title in enumerate(titles):
        r, c = divmod(i, cols)
        size, text = _fitted(str(title), fontsize, width_pt)
        x, y = c * cell_w + gap // 2 + w / 2, r * cell_h + band * 0.55
        ax.text(x, y, text, fontsize=size, ha="center", va="center")
    out = Path(path)
    fig.savefig(out, format="png", dpi=DPI)
    return out


def _fitted(title: str, fontsize: float, width_pt: float) -> tuple[float, str]:
    """The font size (at most ``fontsize``) and text that fit ``width_pt`` points."""
    need = _CHAR_WIDTH * len(title)  # points per point of font size
    size = min(fontsize, width_pt / need) if need else fontsize
    if size >= SMALLEST_FONT:
        return size, title
    keep = max(1, int(width_pt / (_CHAR_WIDTH * SMALLEST_FONT)) - 1)
    return SMALLEST_FONT, title[:keep] + "…"
