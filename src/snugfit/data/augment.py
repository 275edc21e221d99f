"""Batch augmentation on the training device, as pure functions.

Workers only decode and presize images (uint8, CPU); everything random happens
here, on whole batches on the training device, in one interpolation: a random
resized crop, a flip and a rotation are folded into one affine matrix per image
and applied with a single ``grid_sample``. Resampling once (instead of crop, then
resize, then rotate) is both faster and sharper.

All random parameters are drawn on the CPU from an explicit ``torch.Generator``,
so a seed gives the same augmentations on a CPU, a GPU or any other device.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor

from snugfit.errors import SnugfitError
from snugfit.sizes import Size, as_hw

# timm's constants under the names this package has always used (one source).
IMAGENET_MEAN = IMAGENET_DEFAULT_MEAN
IMAGENET_STD = IMAGENET_DEFAULT_STD


@dataclass(frozen=True)
class Augmentation:
    """The training augmentation's settings: one frozen value (`replace` makes a new one).

    >>> Augmentation(flip=False).params()
    {'min_scale': 0.75, 'max_rotate': 10.0, 'flip': False, 'max_lighting': 0.2}

    Attributes:
        enabled: Augment training batches (False: only resize and normalise).
        min_scale: Smallest random-crop area fraction, in ``(0, 1]``.
        max_rotate: Largest random rotation, in degrees, in ``[0, 180]``.
        flip: Random horizontal flips.
        max_lighting: Largest relative brightness/contrast change, in ``[0, 1)``.
    """

    enabled: bool = True
    min_scale: float = 0.75
    max_rotate: float = 10.0
    flip: bool = True
    max_lighting: float = 0.2

    def __post_init__(self):
        if not 0 < self.min_scale <= 1:
            raise SnugfitError(f"min_scale: must be in (0, 1], got {self.min_scale!r}")
        if not 0 <= self.max_lighting < 1:
            raise SnugfitError(f"max_lighting: must be in [0, 1), got {self.max_lighting!r}")
        if not 0 <= self.max_rotate <= 180:
            raise SnugfitError(f"max_rotate: must be degrees in [0, 180], got {self.max_rotate!r}")
        for name in ("min_scale", "max_rotate", "max_lighting"):
            object.__setattr__(self, name, float(getattr(self, name)))

    def replace(self, **changes) -> Augmentation:
        """A copy with some fields changed (and checked)."""
        return dataclasses.replace(self, **changes)

    def params(self) -> dict:
        """The keyword arguments of `batch_augment` and `augment_params`."""
        return {
            "min_scale": self.min_scale,
            "max_rotate": self.max_rotate,
            "flip": self.flip,
            "max_lighting": self.max_lighting,
        }


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> Tensor:
    """``n`` float64 samples uniform in ``[low, high]``, drawn on the CPU."""
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


def affine_params(
    n: int,
    *,
    min_scale: float = 0.75,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    max_rotate: float = 10.0,
    flip: bool = True,
    generator: torch.Generator | None = None,
    extent: tuple[float, float] = (1.0, 1.0),
) -> Tensor:
    """Sample one affine matrix per image for ``F.affine_grid``.

    Each matrix maps output coordinates to input coordinates, both normalised to
    ``[-1, 1]`` (``align_corners=False``). It combines:

    * a random resized crop: area fraction uniform in ``[min_scale, 1]`` of the
      ``extent`` window, aspect ratio log-uniform in ``ratio``, placed uniformly at
      random inside the image;
    * a horizontal flip with probability 0.5 (if ``flip``);
    * a rotation uniform in ``[-max_rotate, max_rotate]`` degrees.

    The aspect-ratio range is narrowed per image so that the crop always fits
    inside the image at the sampled area; with ``min_scale=1`` the crop is the
    whole ``extent`` window (the whole image by default). Rotated corners may fall
    outside; the sampler reflects them.
    Aspect ratios are relative to the input, which has the output's aspect when it
    comes from `snugfit.data.decode.decode_train`; the rotation is a rotation of a
    square image (`batch_augment` corrects it for others: `_rotate_rigidly`).

    Args:
        n: Number of matrices.
        min_scale: Smallest crop area, as a fraction of the image, in ``(0, 1]``.
        ratio: Range of crop aspect ratios (width / height).
        max_rotate: Largest rotation, in degrees.
        flip: Whether to flip half of the images horizontally.
        generator: CPU generator the parameters are drawn from.
        extent: ``(fh, fw)``: the fraction of the input's height and width the output
            covers at scale 1, each in ``(0, 1]``; e.g. ``(512/1400, 512/2100)`` for
            512x512 crops out of 1400x2100 images (segmentation). The draws are the
            same whatever the extent; ``(1, 1)`` gives exactly the matrices of before.

    Returns:
        A float32 CPU tensor of shape ``(n, 2, 3)``.
    """
    if not 0 < min_scale <= 1:
        raise ValueError(f"min_scale must be in (0, 1], got {min_scale}")
    fh, fw = (float(f) for f in extent)
    if not (0 < fh <= 1 and 0 < fw <= 1):
        raise ValueError(f"extent must be two fractions in (0, 1], got {extent}")
    scale = _uniform(n, min_scale, 1.0, generator)
    r = _crop_ratio(scale, ratio, fh, fw, generator)
    # Half-extents of the crop in normalised coordinates equal its fractions of the image
    # (times 1.0 exactly for the whole image).
    w = (fw * (scale * r).sqrt()).clamp(max=1.0)
    h = (fh * (scale / r).sqrt()).clamp(max=1.0)
    cx = (1 - w) * (2 * torch.rand(n, generator=generator, dtype=torch.float64) - 1)
    cy = (1 - h) * (2 * torch.rand(n, generator=generator, dtype=torch.float64) - 1)
    if flip:
        sign = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0).double()
    else:
        sign = torch.ones(n, dtype=torch.float64)
    angle = _uniform(n, -max_rotate, max_rotate, generator) * (math.pi / 180)
    cos, sin = angle.cos(), angle.sin()
    # theta[:, :, :2] = R(angle) @ diag(sign * w, h): the crop rectangle, flipped,
    # then rotated about its centre, which sits at (cx, cy).
    theta = torch.stack(
        [
            torch.stack([cos * sign * w, -sin * h, cx], dim=1),
            torch.stack([sin * sign * w, cos * h, cy], dim=1),
        ],
        dim=1,
    )
    return theta.float()


def _crop_ratio(
    scale: Tensor, ratio: tuple[float, float], fh: float, fw: float, generator
) -> Tensor:
    """Aspect ratios log-uniform in ``ratio``, narrowed so that each crop fits.

    A crop of area s (of the extent window ``(fh, fw)``) fits (width, height <= 1) only
    for ratios in [s fh^2, 1 / (s fw^2)]: [s, 1/s] for the whole image (log 1 = 0 exactly,
    so those draws are those of before extents).
    """
    n = len(scale)
    log_lo = torch.maximum(
        torch.full_like(scale, math.log(ratio[0])), scale.log() + 2 * math.log(fh)
    )
    log_hi = torch.minimum(
        torch.full_like(scale, math.log(ratio[1])), -scale.log() - 2 * math.log(fw)
    )
    log_hi = torch.maximum(log_lo, log_hi)  # an empty range collapses to its lower end
    return torch.exp(
        log_lo + (log_hi - log_lo) * torch.rand(n, generator=generator, dtype=torch.float64)
    )


def _stats(values: Sequence[float], x: Tensor) -> Tensor:
    """A ``(1, 3, 1, 1)`` tensor of per-channel ``values`` on ``x``'s device."""
    return torch.as_tensor(values, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)


def normalize(x01: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Map images in ``[0, 1]`` to ``(x - mean) / std`` per channel (new tensor)."""
    return (x01 - _stats(mean, x01)) / _stats(std, x01)


def denormalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Undo `normalize`: map normalised images back to ``[0, 1]`` (not clamped)."""
    return x * _stats(std, x) + _stats(mean, x)


def _lighting(x: Tensor, contrast: Tensor, brightness: Tensor) -> Tensor:
    """Per-image contrast then brightness factors (CPU float tensors), in place."""
    b = x.shape[0]
    contrast = contrast.to(x.device).view(b, 1, 1, 1)
    brightness = brightness.to(x.device).view(b, 1, 1, 1)
    # Contrast stretches each image about its own mean grey level, then
    # brightness scales it; both are what a camera's exposure would change.
    grey = x.mean(dim=(1, 2, 3), keepdim=True)
    return x.sub_(grey).mul_(contrast).add_(grey).mul_(brightness)


def augment_params(
    n: int,
    *,
    generator: torch.Generator | None = None,
    min_scale: float = 0.75,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    max_rotate: float = 10.0,
    flip: bool = True,
    max_lighting: float = 0.2,
    extent: tuple[float, float] = (1.0, 1.0),
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Every random draw of `batch_augment` (and `batch_augment_masks`) for ``n``
    images, in its order; ``extent`` changes the matrices, not the draws.

    Returns:
        The affine matrices ``(n, 2, 3)`` and the contrast and brightness factors
        ``(n,)`` (None when ``max_lighting`` is 0).
    """
    theta = affine_params(
        n, min_scale=min_scale, ratio=ratio, max_rotate=max_rotate, flip=flip,
        generator=generator, extent=extent,
    )  # fmt: skip
    if max_lighting <= 0:
        return theta, None, None
    contrast = _uniform(n, 1 - max_lighting, 1 + max_lighting, generator).float()
    brightness = _uniform(n, 1 - max_lighting, 1 + max_lighting, generator).float()
    return theta, contrast, brightness


def batch_augment(
    x_uint8: Tensor,
    size: Size,
    *,
    generator: torch.Generator | None = None,
    min_scale: float = 0.75,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    max_rotate: float = 10.0,
    flip: bool = True,
    max_lighting: float = 0.2,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    draw: tuple[int, slice] | None = None,
) -> Tensor:
    """Randomly augment a batch of presized uint8 images into normalised floats.

    One bilinear ``grid_sample`` per batch applies the crop, flip and rotation of
    `affine_params` (reflection padding), resampling straight to ``size``; then
    brightness/contrast jitter, a clamp to ``[0, 1]`` and normalisation.

    Args:
        x_uint8: ``(B, 3, H, W)`` uint8 images on any device.
        size: The output: a side (square) or ``(height, width)``.
        generator: CPU generator for all random parameters.
        min_scale: Smallest crop area fraction (1 disables cropping).
        ratio: Range of crop aspect ratios.
        max_rotate: Largest rotation in degrees (0 disables rotation).
        flip: Whether to flip half of the images horizontally.
        max_lighting: Largest relative brightness/contrast change (0 disables it).
        mean: Per-channel mean for normalisation.
        std: Per-channel standard deviation for normalisation.
        draw: ``(n, rows)``: draw the parameters for ``n`` images, as for a whole
            batch, and apply ``rows`` of them to these ``B``. Under torchrun each
            rank holds a shard of the global batch: the same draws on every rank,
            each taking its shard's rows, augment exactly as one process would.

    Returns:
        A float32 tensor ``(B, 3, height, width)`` on the input's device.
    """
    b, _, in_h, in_w = x_uint8.shape
    n, rows = draw if draw is not None else (b, slice(0, b))
    theta, contrast, brightness = augment_params(
        n, generator=generator, min_scale=min_scale, ratio=ratio, max_rotate=max_rotate,
        flip=flip, max_lighting=max_lighting,
    )  # fmt: skip
    # Resample the 0..255 values directly: the /255 is folded into the final
    # normalisation (resampling and lighting are linear), saving a pass over the
    # larger input.
    x = x_uint8.float()
    theta = _rotate_rigidly(theta[rows], in_w / in_h)
    grid = _sampling_grid(theta.to(x.device), size)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return _light_and_normalize(x, contrast, brightness, rows, mean, std)


def _light_and_normalize(
    x: Tensor,
    contrast: Tensor | None,
    brightness: Tensor | None,
    rows: slice,
    mean: Sequence[float],
    std: Sequence[float],
) -> Tensor:
    """Resampled 0..255 floats: lighting (when drawn), clamp, normalisation, in place."""
    if contrast is not None:
        x = _lighting(x, contrast[rows], brightness[rows])
    x = x.clamp_(0, 255)
    scale = 1 / (255 * _stats(std, x))
    return x.mul_(scale).sub_(_stats(mean, x) / _stats(std, x))


def batch_augment_masks(
    x_uint8: Tensor,
    masks: Tensor,
    size: Size,
    *,
    extent: tuple[float, float] = (1.0, 1.0),
    generator: torch.Generator | None = None,
    min_scale: float = 0.75,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    max_rotate: float = 10.0,
    flip: bool = True,
    max_lighting: float = 0.2,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    draw: tuple[int, slice] | None = None,
) -> tuple[Tensor, Tensor]:
    """`batch_augment` for images with masks (segmentation): one geometric transform per
    image, applied to the image and to its mask with the same sampling grid.

    The image is resampled bilinearly, the mask with nearest neighbours (a class value
    is never blended with another); both reflect at the borders, so a reflected pixel
    keeps the label of the pixel it mirrors and image and mask stay aligned everywhere.
    Lighting changes the images only. The draws are `batch_augment`'s, in its order.

    Args:
        x_uint8: ``(B, 3, H, W)`` uint8 images on any device.
        masks: ``(B, H, W)`` integer masks (class indices, 255 void) on the same device.
        size: The output: a side or ``(height, width)``; with ``extent`` below 1, a
            crop of the input (e.g. 512 out of 1400x2100).
        extent: The fraction ``(fh, fw)`` of the input the output covers at scale 1
            (`affine_params`); ``size / input size`` for crops at the input's scale.
        draw: As in `batch_augment` (torchrun shards).
        generator, min_scale, ratio, max_rotate, flip, max_lighting, mean, std: As in
            `batch_augment`.

    Returns:
        ``(x, y)``: float32 ``(B, 3, height, width)`` and long ``(B, height, width)``.
    """
    b, _, in_h, in_w = x_uint8.shape
    n, rows = draw if draw is not None else (b, slice(0, b))
    theta, contrast, brightness = augment_params(
        n, generator=generator, min_scale=min_scale, ratio=ratio, max_rotate=max_rotate,
        flip=flip, max_lighting=max_lighting, extent=extent,
    )  # fmt: skip
    x = x_uint8.float()
    theta = _rotate_rigidly(theta[rows], in_w / in_h)
    grid = _sampling_grid(theta.to(x.device), size)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    # Class values 0..255 are exact in float32; "nearest" picks one of them.
    y = F.grid_sample(
        masks.unsqueeze(1).float(), grid, mode="nearest", padding_mode="reflection",
        align_corners=False,
    ).squeeze(1)  # fmt: skip
    return _light_and_normalize(x, contrast, brightness, rows, mean, std), y.long()


def center_crop(x: Tensor, size: Size) -> Tensor:
    """The central ``size`` window of ``(..., H, W)`` images or masks (no resampling).

    >>> center_crop(torch.arange(16).view(4, 4), 2).tolist()
    [[5, 6], [9, 10]]
    """
    h, w = as_hw(size)
    in_h, in_w = x.shape[-2:]
    if (h, w) == (in_h, in_w):
        return x
    if h > in_h or w > in_w:
        raise SnugfitError(f"crop: {h}x{w} does not fit in {in_h}x{in_w}")
    top, left = (in_h - h) // 2, (in_w - w) // 2
    return x[..., top : top + h, left : left + w]


def _rotate_rigidly(theta: Tensor, aspect: float) -> Tensor:
    """`affine_params`' matrices for an input ``aspect`` (width / height) times wider
    than high: a rotation in normalised coordinates would shear such an image, so the
    2x2 part ``M`` becomes ``D^-1 M D`` with ``D = diag(aspect, 1)`` (a rotation in
    pixels). Square inputs are left exactly as they are."""
    if aspect == 1:
        return theta
    theta = theta.clone()
    theta[:, 0, 1] /= aspect
    theta[:, 1, 0] *= aspect
    return theta


@functools.lru_cache(maxsize=8)
def _pixel_centres(size: int, device: torch.device) -> Tensor:
    """The ``size`` pixel-centre coordinates along one axis, normalised to [-1, 1]."""
    return torch.linspace(-1 + 1 / size, 1 - 1 / size, size, device=device)


def _sampling_grid(theta: Tensor, size: Size) -> Tensor:
    """What ``F.affine_grid(theta, (B, C, height, width), align_corners=False)`` returns.

    Built from outer sums: each output coordinate is ``a*x + b*y + c`` with ``x``
    varying along columns and ``y`` along rows. (A ``bmm`` of a base grid by
    ``theta``, or ``affine_grid`` itself, took 8-9 ms of ~25 for 32 images at
    224 px on 2 CPU cores: a product with an inner dimension of 3 is all overhead.)
    """
    h, w = as_hw(size)
    t = theta.unsqueeze(-1).unsqueeze(-1)  # (B, 2, 3, 1, 1)
    xs = _pixel_centres(w, theta.device).view(1, 1, w)
    ys = _pixel_centres(h, theta.device).view(1, h, 1)
    gx = t[:, 0, 0] * xs + t[:, 0, 1] * ys + t[:, 0, 2]
    gy = t[:, 1, 0] * xs + t[:, 1, 1] * ys + t[:, 1, 2]
    return torch.stack([gx, gy], dim=-1)


def center_batch(
    x_uint8: Tensor,
    size: Size,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Tensor:
    """Convert a uint8 batch to normalised floats without augmentation.

    The batch is resized (bilinear, antialiased) only if it is not already
    ``size``; validation batches are decoded at ``size`` and are not.

    Args:
        x_uint8: ``(B, 3, H, W)`` uint8 images on any device.
        size: The output: a side (square) or ``(height, width)``.
        mean: Per-channel mean for normalisation.
        std: Per-channel standard deviation for normalisation.

    Returns:
        A float32 tensor ``(B, 3, height, width)`` on the input's device.
    """
    x = x_uint8.float().div_(255)
    hw = as_hw(size)
    if tuple(x.shape[-2:]) != hw:
        x = F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=True).clamp_(
            0, 1
        )
    return x.sub_(_stats(mean, x)).div_(_stats(std, x))
