"""16-bit RGB TIFFs and PNGs (satellite and microscopy products): Pillow opens them as 8-bit
RGB keeping each value's high byte, so 12-bit data came out near black; they are
read whole by tifffile and scaled as 16-bit greyscale is."""

import numpy as np
import pytest
import tifffile
from PIL import Image

from snugfit.data.check import check_folder
from snugfit.data.decode import open_image
from snugfit.errors import UnreadableImage


def _scaled(a: np.ndarray, top: float) -> np.ndarray:
    return np.clip(a.astype(np.float64) * 255.0 / top, 0, 255).round().astype(np.uint8)


@pytest.mark.parametrize("compression", [None, "zlib", "lzw"])
def test_12_bit_rgb_is_scaled_from_4095(tmp_path, compression):
    a = (np.random.default_rng(0).random((20, 30, 3)) * 4095).astype(np.uint16)
    path = tmp_path / "scene.tif"
    tifffile.imwrite(path, a, photometric="rgb", compression=compression)
    with Image.open(path) as img:
        assert img.mode == "RGB" and np.asarray(img).max() <= 15  # what Pillow alone gives
    got = np.asarray(open_image(path))
    assert got.dtype == np.uint8 and np.array_equal(got, _scaled(a, 4095.0))


def test_full_16_bit_range_and_rgba_on_white(tmp_path):
    rng = np.random.default_rng(1)
    a = (rng.random((10, 12, 4)) * 65535).astype(np.uint16)
    a[0, 0, :3], a[..., 3] = 60000, 65535
    a[1, 1, 3] = 0  # transparent: shown on white
    path = tmp_path / "rgba.tif"
    tifffile.imwrite(path, a, photometric="rgb", extrasamples=["unassalpha"])
    got = np.asarray(open_image(path))
    assert got.shape == (10, 12, 3)
    assert np.array_equal(got[2:, 2:], _scaled(a[2:, 2:, :3], 65535.0))
    assert got[1, 1].tolist() == [255, 255, 255]


def test_orientation_is_applied(tmp_path):
    a = np.zeros((10, 20, 3), np.uint16)
    a[0, 0] = 4000  # the top-left corner, stored
    path = tmp_path / "turned.tif"
    tifffile.imwrite(path, a, photometric="rgb", extratags=[(274, "H", 1, 6, True)])
    got = np.asarray(open_image(path))
    assert got.shape == (20, 10, 3)  # orientation 6: turned a quarter clockwise
    assert got[0, -1, 0] == 249 and got.sum() == 249 * 3


def test_multispectral_bands_are_one_clear_reason(tmp_path):
    path = tmp_path / "sentinel.tif"
    tifffile.imwrite(path, np.ones((8, 8, 5), np.uint16), planarconfig="contig")
    with pytest.raises(UnreadableImage) as e:
        open_image(path)
    assert str(e.value) == (
        f"{path}: 5 bands of uint16 (snugfit reads greyscale, RGB or RGBA images)"
    )


def test_a_folder_of_16_bit_scenes_checks_usable_and_not_dark(tmp_path):
    rng = np.random.default_rng(2)
    for cls in ("field", "forest"):
        for split, n in (("train", 4), ("val", 2)):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                a = (rng.random((16, 16, 3)) * 3000 + 500).astype(np.uint16)
                tifffile.imwrite(folder / f"{i}.tif", a, photometric="rgb", compression="lzw")
    report = check_folder(tmp_path, size=16)
    assert report.usable == 12 and not report.unreadable
    assert np.asarray(open_image(tmp_path / "train" / "field" / "0.tif")).mean() > 100


def test_a_file_named_tif_that_is_no_tiff_is_not_an_image(tmp_path):
    path = tmp_path / "fake.tif"
    path.write_text("not a tiff")
    with pytest.raises(UnreadableImage) as e:
        open_image(path)
    assert str(e.value) == f"{path}: not an image"


def test_16_bit_rgb_png_is_scaled_too(tmp_path):
    import imagecodecs

    a = (np.random.default_rng(3).random((12, 9, 3)) * 4095).astype(np.uint16)
    path = tmp_path / "scan.png"
    path.write_bytes(imagecodecs.png_encode(a))
    with Image.open(path) as img:
        assert img.mode == "RGB" and np.asarray(img).max() <= 15  # Pillow alone
    assert np.array_equal(np.asarray(open_image(path)), _scaled(a, 4095.0))
    eight = tmp_path / "eight.png"
    Image.fromarray((a >> 4).astype(np.uint8)).save(eight)  # 8-bit: Pillow's, as before
    assert np.array_equal(np.asarray(open_image(eight)), (a >> 4).astype(np.uint8))


def test_float_rgb_pillow_cannot_open_is_read_and_a_huge_one_refused(tmp_path, monkeypatch):
    a = np.random.default_rng(4).random((6, 8, 3)).astype(np.float32)
    path = tmp_path / "reflectance.tif"
    tifffile.imwrite(path, a, photometric="rgb")
    assert np.array_equal(np.asarray(open_image(path)), _scaled(a, 1.0))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # 48 pixels > twice the limit
    with pytest.raises(UnreadableImage) as e:
        open_image(path)
    assert e.value.reason == "image too large (possible decompression bomb)"
