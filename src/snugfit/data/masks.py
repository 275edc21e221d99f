"""Segmentation masks: reading one, what is wrong with one, and decoding an image with it.

A mask is a single-channel 8-bit image of its image's size, each pixel's value a
class index, 255 void (`snugfit.tasks.VOID`). It labels the image as it is shown:
upright, after the image's EXIF rotation. Per file, as `snugfit.data.decode` is for
images:

* `open_mask` reads a mask's values: greyscale ``L``; palette ``P`` read as its
  indices (PASCAL VOC's masks are palette PNGs whose index is the class); bilevel
  ``1`` as 0 and 1; ``RGB`` whose three channels are equal (greyscale saved as
  colour) as that channel; a JPEG as a binary mask, thresholded halfway (`thresholded`);
  given a class_dict.csv's colours, a colour mask as its classes (`colour_classes`);
  these with an alpha channel (``LA``, ``RGBA``) as without it when
  every pixel is opaque (`opaque`). Colour, 16-bit, float and transparent masks are
  refused with
  `snugfit.errors.UnreadableImage` and a reason saying so: their values are not
  class indices, and guessing would train on wrong labels.
* `pair_header_problem`: what the two headers already say is wrong (a cheap check
  for loaders built without the data check).
* `decode_pair`: the image (bilinear) and its mask (nearest neighbour, so a class is
  never blended with another) cut with the same box and resized to the same size,
  as one uint8 ``(4, H, W)`` array: 3 colour channels and the mask.
* `value_counts` and `value_problem`: a mask's pixels per value, and the values that
  are neither a class nor void.
* `binary_masks`: masks holding only 0 and 255 mark an object with 255; they are read
  with 255 as class 1, not void (`read_binary`, `binary_counts`).

Problems with a pair are reported under the image's path (the item training skips),
with a reason that names the mask file when the mask is at fault.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from snugfit.data.decode import centred_box, failure_reason, header_problem, is_empty, open_image
from snugfit.errors import UnreadableImage
from snugfit.sizes import Size, as_hw
from snugfit.tasks import VOID

_ORIENTATION = 0x0112  # the EXIF tag
_QUARTER_TURNS = (5, 6, 7, 8)  # orientations stored rotated by 90 degrees
_HEADER_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


class NotAMask(UnreadableImage):
    """A readable image that cannot be a mask: colour, 16-bit, float or with alpha."""


NEED = "a mask must be one 8-bit channel of class indices"
JPEG_THRESHOLD = 128
# Colour masks (a class_dict.csv): how far a pixel may be from its class's colour, on
# every channel, and the share of a mask that may be near no class's (void then).
COLOUR_TOLERANCE = 40
STRAY_SHARE = 0.01
Colours = Sequence[tuple[int, int, int]]
WITHOUT_ALPHA = {"RGBA": "RGB", "LA": "L"}  # read when the alpha is opaque


def mode_problem(mode: str) -> str | None:
    """Why a Pillow image ``mode`` cannot be a mask; None for ``L``, ``P``, ``1`` and
    ``RGB`` (read when its channels are equal: `grey_values`), and for those with an
    alpha channel, ``LA`` and ``RGBA`` (read when it is opaque: `opaque`).

    >>> mode_problem("L") is None, mode_problem("RGBA") is None, mode_problem("CMYK")
    (True, True, 'colour (CMYK) mask: a mask must be one 8-bit channel of class indices')
    """
    if mode in ("L", "P", "1", "RGB") or mode in WITHOUT_ALPHA:
        return None
    if mode in ("RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV"):
        return f"colour ({mode}) mask: {NEED}"
    if mode.startswith("I;16"):
        return f"16-bit ({mode}) mask: {NEED}"
    if mode in ("I", "F"):
        return f"32-bit ({mode}) mask: {NEED}"
    if mode in ("La", "PA"):
        return f"mask with an alpha channel ({mode}): {NEED}"
    return f"unsupported mask mode {mode}: {NEED}"


def open_mask(path: str | os.PathLike, colours: Colours | None = None) -> np.ndarray:
    """A mask file's values: a uint8 ``(H, W)`` array (see the module docstring); with
    ``colours`` (a class_dict.csv's), a colour mask's classes (`colour_classes`).

    Raises:
        UnreadableImage: The file is empty, not an image, truncated, or not an
            8-bit single-channel mask (colour, 16-bit, transparent).
    """
    if is_empty(path):
        raise UnreadableImage(path, "empty file")
    try:
        with Image.open(path) as img:
            jpeg = img.format == "JPEG"
            if jpeg and (colours is None or img.mode not in ("RGB", "P")):
                return thresholded(img)
            problem = None if jpeg else mode_problem(img.mode)
            if problem is not None:
                raise NotAMask(path, problem)
            img.load()
            if img.mode in WITHOUT_ALPHA:
                img = opaque(path, img)
            if colours is not None and img.mode in ("RGB", "P"):
                rgb = np.asarray(img.convert("RGB"))
                void = np.asarray(img) == VOID if img.mode == "P" else None  # VOC's border
                # a JPEG's chroma bleeds far at every edge: its nearest colour, however far
                return colour_classes(path, rgb, colours, 255 if jpeg else None, void)
            values = np.asarray(img)  # "P": the palette indices; "1": booleans
            if img.mode == "RGB":
                values = grey_values(path, values)
    except UnreadableImage:
        raise
    except _HEADER_ERRORS as e:
        raise UnreadableImage(path, failure_reason(e)) from e
    return np.array(values, dtype=np.uint8)  # a writable copy, independent of the file


def opaque(path, img: Image.Image) -> Image.Image:
    """A mask saved with an alpha channel (image editors and annotation tools export
    ``RGBA``), without it, when every pixel is opaque. A transparent pixel is refused,
    not guessed: it could mean background or unlabelled (void)."""
    alpha = np.asarray(img.getchannel("A"))
    see_through = float((alpha != 255).mean())
    if see_through:
        raise NotAMask(
            path,
            f"mask with an alpha channel ({img.mode}), {see_through:.1%} of it not opaque: {NEED}",
        )
    return img.convert(WITHOUT_ALPHA[img.mode])


def colour_classes(
    path, rgb: np.ndarray, colours: Colours, tolerance: int | None = None, void=None
) -> np.ndarray:
    """A colour mask's classes: each pixel is the class whose colour (``colours[i]`` is
    class i's ``(r, g, b)``) is nearest, within ``tolerance`` (`COLOUR_TOLERANCE`) on
    every channel. Pixels near no colour are void when they are under `STRAY_SHARE` of
    the mask (stray edge pixels), and make it `NotAMask` otherwise (colours of another
    table). ``void``: pixels known to be void (a palette mask's index 255, as PASCAL
    VOC marks object borders), whatever their colour."""
    tolerance = COLOUR_TOLERANCE if tolerance is None else tolerance
    table = np.asarray(colours, dtype=np.int32).reshape(-1, 3)
    keys = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    found, inverse = np.unique(keys.ravel(), return_inverse=True)
    counts = np.bincount(inverse, None if void is None else ~void.ravel(), len(found))
    found_rgb = np.stack([found >> 16, (found >> 8) & 255, found & 255], axis=1)
    distance = np.abs(found_rgb[:, None, :] - table[None]).max(axis=2)  # (colours found, classes)
    nearest = distance.argmin(axis=1)
    stray = (distance.min(axis=1) > tolerance) & (counts > 0)
    share = counts[stray].sum() / keys.size
    if share > STRAY_SHARE:
        worst = np.argsort(-counts[stray])[:3]
        shown = ", ".join(str(tuple(int(v) for v in c)) for c in found_rgb[stray][worst])
        raise NotAMask(path, f"colours that are no class's: {shown} ({share:.1%} of the pixels)")
    classes = np.where(stray, VOID, nearest).astype(np.uint8)[inverse].reshape(keys.shape)
    if void is not None:
        classes[void] = VOID
    return classes


def thresholded(img: Image.Image) -> np.ndarray:
    """A JPEG mask as the binary mask it can only be: grey >= `JPEG_THRESHOLD` is 255 (the
    object, read as class 1 by `binary_masks`), the rest 0. JPEG's compression blends
    values at every edge (Kvasir-SEG's masks: 0 and 255 with every value between), so
    no class index survives it; halfway is where blending puts the edge."""
    grey = np.asarray(img.convert("L"))
    return np.where(grey >= JPEG_THRESHOLD, VOID, 0).astype(np.uint8)


def grey_values(path, rgb: np.ndarray) -> np.ndarray:
    """An RGB mask's values: its one channel when all three are equal (a greyscale mask
    saved as colour, as OpenCV and image editors often write them); else `NotAMask`,
    since colours are no class indices and guessing would train on wrong labels."""
    grey = rgb[..., 0]
    if not ((rgb[..., 1] == grey).all() and (rgb[..., 2] == grey).all()):
        raise NotAMask(path, f"colour (RGB) mask, its channels differ: {NEED}")
    return grey


def upright_size(path: str | os.PathLike) -> tuple[int, int]:
    """An image's ``(width, height)`` as shown (after its EXIF rotation), from its header."""
    with Image.open(path) as img:
        w, h = img.size
        turned = img.getexif().get(_ORIENTATION, 1) in _QUARTER_TURNS
    return (h, w) if turned else (w, h)


def mismatch(image_size: tuple[int, int], mask_size: tuple[int, int], mask) -> str | None:
    """The reason an image of ``image_size`` and its ``mask`` of ``mask_size`` (both
    ``(width, height)``) cannot be a pair; None when they have the same size."""
    if tuple(image_size) == tuple(mask_size):
        return None
    (w, h), (mw, mh) = image_size, mask_size
    return f"image is {w}x{h} but its mask {mask} is {mw}x{mh} (width x height)"


def pair_header_problem(image: str | os.PathLike, mask: str | os.PathLike) -> str | None:
    """Why an image and its mask cannot be used, judging by their headers: the image's
    problem, the mask's (empty, not an image, not 8-bit single-channel) or a size
    mismatch; None when both look fine."""
    problem = header_problem(image)
    if problem is not None:
        return problem
    if is_empty(mask):
        return f"mask {mask}: empty file"
    try:
        with Image.open(mask) as m:
            mode, mask_size, jpeg = m.mode, m.size, m.format == "JPEG"
        image_size = upright_size(image)
    except FileNotFoundError:
        return f"no mask ({mask} not found)"
    except _HEADER_ERRORS as e:
        return f"mask {mask}: {failure_reason(e)}"
    problem = None if jpeg else mode_problem(mode)  # a JPEG of any mode is thresholded
    if problem is not None:
        return f"mask {mask}: {problem}"
    return mismatch(image_size, mask_size, mask)


def value_counts(mask: np.ndarray) -> np.ndarray:
    """Pixels per value 0..255 of a uint8 mask: an int64 ``(256,)`` array."""
    return np.bincount(mask.ravel(), minlength=256)


def value_problem(counts: np.ndarray, n_classes: int) -> str | None:
    """Which values of a mask (its `value_counts`) are neither a class nor void.

    >>> counts = np.zeros(256, dtype=np.int64); counts[[0, 2, 7, 255]] = 1
    >>> value_problem(counts, 3)
    'values 7 are not classes (0-2) or void (255)'
    """
    bad = [v for v in np.flatnonzero(counts).tolist() if v >= n_classes and v != VOID]
    if not bad:
        return None
    shown = ", ".join(map(str, bad[:8])) + (", ..." if len(bad) > 8 else "")
    return f"values {shown} are not classes (0-{n_classes - 1}) or void ({VOID})"


def binary_masks(seen: np.ndarray, n_codes: int | None) -> bool:
    """Whether masks whose `value_counts` sum to ``seen`` are binary masks marking the
    object with 255, as most tools save them: 0 and 255 are their only values, and the
    classes are two (codes.txt) or not named. Read with 255 as void, such masks would
    hold one class and nothing to learn; they are read with 255 as class 1
    (`read_binary`).

    >>> counts = np.zeros(256, dtype=np.int64); counts[[0, 255]] = 10
    >>> binary_masks(counts, None), binary_masks(counts, 3)
    (True, False)
    """
    present = np.flatnonzero(seen).tolist()
    return present == [0, VOID] and n_codes in (None, 2)


def read_binary(values: Tensor) -> Tensor:
    """Binary masks' values as classes: 255 (the object) becomes class 1."""
    return values.masked_fill(values == VOID, 1)


def binary_counts(counts: np.ndarray) -> np.ndarray:
    """A binary mask's `value_counts` as `read_binary` reads it: 255's pixels are class 1's."""
    out = counts.copy()
    out[1] += out[VOID]
    out[VOID] = 0
    return out


def decode_pair(
    image: str | os.PathLike,
    mask: str | os.PathLike,
    size: Size,
    n_classes: int | None = None,
    colours: Colours | None = None,
) -> Tensor:
    """An image and its mask cut with one box and resized to ``size`` together.

    The box is the largest centred one of ``size``'s aspect (the whole image when the
    aspects agree), in the image's full-resolution pixels (JPEGs are not decoded at a
    reduced scale here: the mask's pixels must map exactly); the image is resampled
    bilinearly, the mask with nearest neighbours.

    Args:
        image: The image file.
        mask: Its mask file.
        size: The output: a side or ``(height, width)``.
        n_classes: When given, a mask value that is neither a class nor void is an error.
        colours: A colour mask's class colours (`open_mask`).

    Returns:
        A uint8 tensor ``(4, height, width)``: RGB, then the mask.

    Raises:
        UnreadableImage: Under the image's path: the image cannot be decoded, or its
            mask cannot (the reason names the mask), or their sizes differ, or the
            mask has values that are not classes.
    """
    img = open_image(image)
    try:
        values = open_mask(mask, colours)
    except UnreadableImage as e:
        raise UnreadableImage(image, f"mask {mask}: {e.reason}") from None
    mask_size = (values.shape[1], values.shape[0])
    problem = mismatch(img.size, mask_size, mask)
    if problem is None and n_classes is not None:
        problem = value_problem(value_counts(values), n_classes)
        problem = problem and f"mask {mask}: {problem}"
    if problem is not None:
        raise UnreadableImage(image, problem)
    out_h, out_w = as_hw(size)
    box = centred_box(*img.size, size)
    rgb = img.resize((out_w, out_h), Image.Resampling.BILINEAR, box=box, reducing_gap=3.0)
    labels = Image.fromarray(values, "L").resize((out_w, out_h), Image.Resampling.NEAREST, box=box)
    pixels = np.concatenate([np.asarray(rgb), np.asarray(labels)[:, :, None]], axis=2)
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


def scan_masks(
    masks: list[Path], workers: int | None = None, colours: Colours | None = None
) -> list[np.ndarray | str]:
    """Each mask's `value_counts`, or the reason it cannot be read, decoded in threads
    (Pillow releases the GIL while it decodes), in order."""
    if workers is None:
        workers = min(16, 2 * (os.cpu_count() or 1))

    def counts(mask: Path) -> np.ndarray | str:
        try:
            return value_counts(open_mask(mask, colours))
        except UnreadableImage as e:
            return e.reason

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(counts, masks, chunksize=16))
