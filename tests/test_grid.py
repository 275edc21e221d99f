"""show_batch's picture: one canvas, each image where the grid puts it, titles fitted."""

import numpy as np
import pytest
from PIL import Image

from snugfit.data.grid import CELL_INCHES, DPI, SMALLEST_FONT, _fitted, save_grid


def _colours(n: int, h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    tone = rng.uniform(0.1, 0.9, (n, 1, 1, 3))
    return np.broadcast_to(tone, (n, h, w, 3)).astype(np.float32)


def test_each_image_is_drawn_in_its_cell(tmp_path):
    images = _colours(5, 40, 60)  # 5 images: a 3 x 2 grid, one cell empty
    out = save_grid(images, [f"class {i}" for i in range(5)], tmp_path / "g.png")
    with Image.open(out) as img:
        a = np.asarray(img.convert("RGB")).astype(float) / 255
    assert a.shape[1] == round(3 * CELL_INCHES * DPI)  # three columns of 2 inches
    cell_w, cell_h = a.shape[1] / 3, a.shape[0] / 2
    for i, want in enumerate(images[:, 0, 0]):
        r, c = divmod(i, 3)
        # the image's centre: below the title band, mid-cell
        y, x = int((r + 0.58) * cell_h), int((c + 0.5) * cell_w)
        np.testing.assert_allclose(a[y, x], want, atol=0.02)
    empty = a[int(1.58 * cell_h), int(2.5 * cell_w)]
    np.testing.assert_allclose(empty, [1, 1, 1])  # white where no image is


def test_titles_are_drawn_above_the_images(tmp_path):
    images = np.full((1, 50, 50, 3), 0.5, np.float32)
    with Image.open(save_grid(images, ["bee"], tmp_path / "t.png")) as img:
        titled = np.asarray(img.convert("L"))
    with Image.open(save_grid(images, [""], tmp_path / "u.png")) as img:
        untitled = np.asarray(img.convert("L"))
    band = titled.shape[0] // 8  # the top rows: the title band
    assert (titled[:band] < 128).sum() > 10  # dark text pixels
    assert (untitled[:band] < 128).sum() == 0


def test_a_long_title_is_set_smaller_then_cut():
    assert _fitted("ant", 9, 144) == (9, "ant")
    size, text = _fitted("x" * 30, 9, 144)  # 30 characters at 9 pt: 162 pt, too wide
    assert text == "x" * 30 and size == pytest.approx(144 / (0.6 * 30))
    size, text = _fitted("y" * 80, 9, 144)
    assert size == SMALLEST_FONT and text.endswith("…") and len(text) == 40


def test_titles_must_match_the_images(tmp_path):
    with pytest.raises(ValueError, match="2 images, 1 titles"):
        save_grid(np.zeros((2, 8, 8, 3), np.float32), ["a"], tmp_path / "x.png")
