"""Decoding one image file: open it upright as 8-bit RGB and resize it once.

This is the per-file part of the pipeline, the work `snugfit.data`'s worker
processes run (and `snugfit.data.check` repeats to find unreadable files):

* `open_image` decodes any mode Pillow reads (16-bit, alpha, CMYK, EXIF
  rotation), and HEIC/HEIF photos through pillow-heif, to RGB, JPEGs at a
  reduced scale when a size is given, and raises
  `snugfit.errors.UnreadableImage` with a short human reason;
* `decode_train` and `decode_valid` turn a file into a uint8 square: the
  training ``presize`` crop, or the timm/ImageNet evaluation crop;
* `prepare_for_predict` applies the evaluation transform to files or PIL images
  without any dataloader, for a learner loaded from disk.

Nothing here knows about datasets or loaders.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pillow_heif
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from snugfit.data.augment import IMAGENET_MEAN, IMAGENET_STD, center_batch
from snugfit.errors import SnugfitError, UnreadableImage, first_line
from snugfit.sizes import Size, as_hw, check_size

# Phones save their photos as HEIC (iPhones by default): Pillow opens them once
# pillow-heif's opener is registered. It applies the file's rotation itself and sets
# the EXIF orientation to 1, so `ImageOps.exif_transpose` does not turn them twice.
# Every module that opens a user's image imports this one (worker processes too).
pillow_heif.register_heif_opener()

_ORIENTATION = 0x0112  # the EXIF tag
_BITS_PER_SAMPLE = 258  # the TIFF tag
_QUARTER_TURNS = (5, 6, 7, 8)  # orientations stored rotated by 90 degrees


def failure_reason(exc: BaseException) -> str:
    """A short human reason for a failure to open or decode an image."""
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image"
    if isinstance(exc, Image.DecompressionBombError):
        return "image too large (possible decompression bomb)"
    msg = str(exc)
    lower = msg.lower()  # Pillow says "image file is truncated" and "Truncated File Read"
    if "truncated" in lower or "broken data stream" in lower:
        return "truncated image data"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if "unsupported" in lower or "not supported" in lower:
        # e.g. "Unsupported BMP pixel depth (7)", "conversion from X to RGB not supported"
        return f"unsupported mode or encoding ({msg})"
    return f"cannot decode ({type(exc).__name__}: {msg})" if msg else "cannot decode"


def is_empty(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an empty file (False when it cannot be stat'ed)."""
    try:
        return os.path.getsize(path) == 0
    except OSError:
        return False  # let Image.open report the real problem


# The value ranges a 16- or 32-bit greyscale image is scaled from, the smallest that
# holds its values: 8-bit data in a 16-bit file; 12-bit scans (X-ray and CT saved from
# DICOM as 16-bit PNGs), which scaled by 65535 kept 16 grey levels of their 4096; 16 bits.
INTEGER_DEPTHS = (255.0, 4095.0, 65535.0)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert a Pillow image of any mode to 8-bit RGB."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I") or mode == "F":
        # 16/32-bit and float greyscale: a plain convert("L") clips at 255, so
        # scale the value range to 8 bits instead.
        a = np.asarray(img, dtype=np.float64)
        peak = float(a.max()) if a.size else 0.0
        if mode == "F":
            top = 1.0 if peak <= 1.0 else 255.0
        else:  # the smallest depth that holds the data (`INTEGER_DEPTHS`)
            top = next((t for t in INTEGER_DEPTHS if peak <= t), peak)
        a = np.clip(a * (255.0 / top), 0, 255).round().astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        # Transparent pixels often hold arbitrary colours (frequently black):
        # show them as white, like a viewer would.
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def open_image(path: str | os.PathLike, size: Size | None = None) -> Image.Image:
    """Open an image file as an upright 8-bit RGB Pillow image.

    JPEGs are decoded at a reduced scale (Pillow's ``draft``, a DCT-domain
    downscale that is much faster for big photos) when ``size`` is given; the
    decoded image keeps its height and width at least ``size``'s (upright, after
    the EXIF rotation). EXIF orientation is applied; palette, alpha (composited on
    white), greyscale, 16-bit and CMYK images are converted to RGB.

    Args:
        path: Image file.
        size: The smallest side, or ``(height, width)``, the caller needs; None:
            full resolution.

    Returns:
        A loaded RGB image, independent of the file.

    Raises:
        UnreadableImage: The file is empty, not an image, truncated, too large
            or otherwise cannot be decoded.
    """
    if is_empty(path):
        raise UnreadableImage(path, "empty file")
    try:
        with Image.open(path) as img:
            if size is not None and img.format == "JPEG":
                h, w = as_hw(size)
                if img.getexif().get(_ORIENTATION, 1) in _QUARTER_TURNS:
                    h, w = w, h  # the file is stored on its side
                img.draft("RGB", (w, h))
            if _deep_colour(img):  # Pillow keeps only each sample's high byte
                return ImageOps.exif_transpose(_deep_image(path, img.format, img.getexif()))
            img.load()  # decode now, so errors surface here
            upright = ImageOps.exif_transpose(img)  # a new image
        return _to_rgb(upright)
    except UnreadableImage:
        raise
    except UnidentifiedImageError as e:
        if _is_tiff(path):  # multispectral, 32-bit RGB...: read, or a reason naming its bands
            return _deep_image(path, "TIFF", Image.Exif())
        raise UnreadableImage(path, failure_reason(e)) from e
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise UnreadableImage(path, failure_reason(e)) from e


def _is_tiff(path: str | os.PathLike) -> bool:
    """Whether the file starts as a TIFF (or BigTIFF) does."""
    try:
        with open(path, "rb") as f:
            return f.read(4) in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")
    except OSError:
        return False


def _deep_colour(img: Image.Image) -> bool:
    """Whether ``img`` is a TIFF or PNG of several samples per pixel over 8 bits each
    (16-bit RGB: satellite and microscopy products), which Pillow opens as 8-bit RGB
    by keeping each value's high byte (12-bit data becomes 0-15: near black)."""
    if img.format == "PNG":  # the decoder's raw mode says the depth: RGB;16B
        return img.mode in ("RGB", "RGBA") and any(";16" in str(t.args) for t in img.tile)
    if img.format != "TIFF":
        return False
    bits = img.tag_v2.get(_BITS_PER_SAMPLE, (8,))
    bits = bits if isinstance(bits, tuple) else (bits,)
    return len(bits) > 1 and max(bits) > 8


def _deep_image(path: str | os.PathLike, fmt: str, exif: Image.Exif) -> Image.Image:
    """A TIFF or PNG of 16-bit (or deeper) samples read whole (tifffile, with
    imagecodecs decoding LZW and the other compressions; imagecodecs' PNG decoder),
    scaled to 8 bits from the smallest of `INTEGER_DEPTHS` that holds its values, as
    16-bit greyscale is: RGB, or RGBA on white; more bands (multispectral) are no
    colour image."""
    try:
        if fmt == "PNG":  # opened by Pillow as RGB(A): its shape and size were checked
            import imagecodecs

            a = np.asarray(imagecodecs.png_decode(Path(path).read_bytes()))
        else:
            import tifffile

            with tifffile.TiffFile(path) as tif:  # its shape first: bands, pixel count
                series = tif.series[0]
                _check_shape(path, tuple(series.shape), np.dtype(series.dtype))
                a = np.asarray(series.asarray())
    except UnreadableImage:
        raise
    except Exception as e:  # the codecs' errors are ValueError, KeyError, ... by codec
        raise UnreadableImage(path, f"cannot decode this {fmt} ({first_line(e)})") from e
    if a.ndim == 2:  # greyscale Pillow could not open (32-bit integers, ...)
        a = np.repeat(a[..., None], 3, axis=-1)
    peak = float(a[..., :3].max()) if a.size else 0.0
    top = (
        1.0
        if a.dtype.kind == "f" and peak <= 1.0
        else next((t for t in INTEGER_DEPTHS if peak <= t), peak)
    )
    scaled = np.clip(a.astype(np.float64) * (255.0 / max(top, 1e-12)), 0, 255)
    out = Image.fromarray(scaled.round().astype(np.uint8), "RGBA" if a.shape[-1] == 4 else "RGB")
    out.info["exif"] = exif.tobytes()  # the file's orientation, for exif_transpose
    return _to_rgb(out)


def _check_shape(path: str | os.PathLike, shape: tuple, dtype: np.dtype) -> None:
    """A greyscale, RGB or RGBA image of numbers within Pillow's pixel limit, or one
    line saying what the file holds instead (multispectral bands, a stack)."""
    colour = len(shape) == 3 and shape[-1] in (3, 4)
    if not (len(shape) == 2 or colour) or dtype.kind not in "uif":
        what = f"{shape[-1]} bands" if len(shape) == 3 else f"an array of shape {shape}"
        raise UnreadableImage(
            path, f"{what} of {dtype} (snugfit reads greyscale, RGB or RGBA images)"
        )
    pixels = shape[0] * shape[1]
    if Image.MAX_IMAGE_PIXELS and pixels > 2 * Image.MAX_IMAGE_PIXELS:
        raise UnreadableImage(path, "image too large (possible decompression bomb)")


def header_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be an image, judging by its header only; None if it looks fine."""
    if is_empty(path):
        return "empty file"
    try:
        with Image.open(path):
            pass  # parses the header; pixel data is not decoded
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        return failure_reason(e)
    return None


def _crop_resize(img: Image.Image, out: Size, crop_frac: float) -> Tensor:
    """Center-crop the largest box of ``out``'s aspect, times ``crop_frac``, and
    resize it to ``out`` (a side or ``(height, width)``): for a square, a square of
    ``crop_frac`` x the shorter side.

    Cropping via ``resize(box=...)`` resamples only the pixels kept (and at
    sub-pixel precision); ``reducing_gap`` first shrinks big images by an integer
    factor, which is fast and, at a gap of 3, visually identical to a full
    antialiased resize.
    """
    out_h, out_w = as_hw(out)
    img = img.resize(
        (out_w, out_h),
        Image.Resampling.BILINEAR,
        box=centred_box(*img.size, out, crop_frac),
        reducing_gap=3.0,
    )
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def centred_box(
    width: int, height: int, out: Size, crop_frac: float = 1.0
) -> tuple[float, float, float, float]:
    """``(left, top, right, bottom)``: the largest centred box of ``out``'s aspect in a
    ``width`` x ``height`` image, times ``crop_frac`` (Pillow's ``resize(box=...)``).

    >>> centred_box(300, 100, 100), centred_box(200, 300, (300, 200))
    ((100.0, 0.0, 200.0, 100.0), (0.0, 0.0, 200.0, 300.0))
    """
    out_h, out_w = as_hw(out)
    box_w = min(width, height * out_w / out_h) * crop_frac
    box_h = min(height, width * out_h / out_w) * crop_frac
    left, top = (width - box_w) / 2, (height - box_h) / 2
    return (left, top, left + box_w, top + box_h)


def decode_train(path: str | os.PathLike, presize: Size) -> Tensor:
    """Decode a training image: the largest centered box of ``presize``'s aspect
    (for a square, the shorter side), resized to ``presize``.

    Args:
        path: Image file.
        presize: The output: a side (square) or ``(height, width)``.

    Returns:
        A uint8 tensor ``(3, height, width)``.

    Raises:
        UnreadableImage: The file cannot be decoded.
    """
    return _crop_resize(open_image(path, presize), presize, 1.0)


def _valid_resize(size: Size, crop_pct: float) -> Size:
    h, w = as_hw(size)
    return check_size("size", (round(h / crop_pct), round(w / crop_pct)))


def _valid_frac(size: Size, crop_pct: float) -> float:
    h = as_hw(size)[0]
    return h / round(h / crop_pct)


def decode_valid(path: str | os.PathLike, size: Size, crop_pct: float = 0.875) -> Tensor:
    """Decode an evaluation image the timm/ImageNet way.

    The image is resized to cover ``round(size / crop_pct)`` (for a square: its
    shorter side to that) and the central ``size`` is kept (done as one resampling
    of the crop).

    Args:
        path: Image file.
        size: The output: a side (square) or ``(height, width)``.
        crop_pct: Fraction of the resized image kept by the crop.

    Returns:
        A uint8 tensor ``(3, height, width)``.

    Raises:
        UnreadableImage: The file cannot be decoded.
    """
    img = open_image(path, _valid_resize(size, crop_pct))
    return _crop_resize(img, size, _valid_frac(size, crop_pct))


def _valid_tensor(image: str | os.PathLike | Image.Image, size: Size, crop_pct: float) -> Tensor:
    if isinstance(image, Image.Image):
        img = _to_rgb(ImageOps.exif_transpose(image))
        return _crop_resize(img, size, _valid_frac(size, crop_pct))
    return decode_valid(image, size, crop_pct)


def prepare_for_predict(
    images: str | os.PathLike | Image.Image | Sequence[str | os.PathLike | Image.Image],
    size: Size,
    crop_pct: float = 0.875,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Tensor:
    """Turn image files or PIL images into a normalised batch (validation transform).

    Needs no dataloaders, so a learner loaded from disk can predict.

    Args:
        images: One path or PIL image, or a sequence of them.
        size: The model input: a side (square) or ``(height, width)``.
        crop_pct: Center-crop fraction, as in `decode_valid`.
        mean: Per-channel normalisation mean.
        std: Per-channel normalisation standard deviation.

    Returns:
        A float32 CPU tensor ``(N, 3, height, width)``.

    Raises:
        UnreadableImage: A file cannot be decoded.
        SnugfitError: ``images`` is empty.
    """
    if isinstance(images, (str, os.PathLike, Image.Image)):
        images = [images]
    images = list(images)
    if not images:
        raise SnugfitError("images: nothing to predict (empty sequence)")
    x = torch.stack([_valid_tensor(im, size, crop_pct) for im in images])
    return center_batch(x, size, mean, std)
