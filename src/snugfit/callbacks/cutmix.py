"""CutMix (Yun et al. 2019; fastai's ``CutMix(alpha=1.0)``, timm's ``--cutmix``): each
training batch gets a box cut from a random permutation of itself pasted in, and
its targets are mixed by the box's share of the image.

The box covers a fraction ``1 - lam`` of the image, ``lam ~ Beta(alpha, alpha)``, with
a random centre; clipped at the image's edges it may cover less, so ``lam`` is then
corrected to the box's actual area (timm's ``correct_lam``, fastai's too). The math
is `cutmix_box` and `cutmix_batch`; the callback draws the numbers.

>>> box, lam = cutmix_box(4, 4, 0.75, torch.Generator().manual_seed(0))
>>> (box[1] - box[0]) * (box[3] - box[2]) == round((1 - lam) * 16)
True
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from snugfit.callbacks.mixup import MixUp

Box = tuple[int, int, int, int]  # (top, bottom, left, right): rows top:bottom, cols left:right


def cutmix_box(
    h: int, w: int, lam: float, generator: torch.Generator | None = None
) -> tuple[Box, float]:
    """A box of about ``(1 - lam) * h * w`` pixels with a random centre (clipped to the
    image, as timm's ``rand_bbox``), and ``lam`` corrected to its area: ``1 - area / (h w)``.

    The centre is drawn from ``generator`` (None: torch's global CPU generator).
    """
    ratio = math.sqrt(1 - lam)
    cut_h, cut_w = int(h * ratio), int(w * ratio)
    cy = int(torch.randint(0, h, (1,), generator=generator))
    cx = int(torch.randint(0, w, (1,), generator=generator))
    top, bottom = min(max(cy - cut_h // 2, 0), h), min(max(cy + cut_h // 2, 0), h)
    left, right = min(max(cx - cut_w // 2, 0), w), min(max(cx + cut_w // 2, 0), w)
    return (top, bottom, left, right), box_lam((top, bottom, left, right), h, w)


def box_lam(box: Box, h: int, w: int) -> float:
    """The share of an ``h x w`` image outside ``box``: the weight of the original's target."""
    top, bottom, left, right = box
    return 1 - (bottom - top) * (right - left) / (h * w)


def cutmix_batch(x: Tensor, y: Tensor, box: Box, perm: Tensor) -> tuple[Tensor, Tensor]:
    """``x`` with ``box`` taken from ``x[perm]``, and the soft targets ``y`` (N, C) mixed
    by area: ``lam * y + (1 - lam) * y[perm]``, ``lam = box_lam(box, H, W)``."""
    top, bottom, left, right = box
    mixed = x.clone()
    mixed[:, :, top:bottom, left:right] = x[perm][:, :, top:bottom, left:right]
    lam = box_lam(box, x.shape[-2], x.shape[-1])
    return mixed, y * lam + y[perm] * (1 - lam)


class CutMix(MixUp):
    """Paste a box from a shuffled copy of each training batch (see the module docstring).

    As `snugfit.callbacks.MixUp`: image batches (4-D) only, precomputed 2-D features
    and validation batches pass through unchanged; soft targets ``(N, C)`` (one-hot
    for single-label, multi-hot for multi-label); torch's global CPU generator (exact
    resume); segmentation refused at ``before_fit``.

    Args:
        alpha: the Beta distribution's parameter (> 0); 1 (the default): box areas
            uniform between none and the whole image.

    Attributes:
        lam, perm, box: the last batch's corrected weight, permutation and box.
    """

    name = "CutMix"

    def __init__(self, alpha: float = 1.0):
        super().__init__(alpha)
        self.box: Box | None = None

    def mix(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        self.box, self.lam = cutmix_box(x.shape[-2], x.shape[-1], self.lam)
        return cutmix_batch(x, y, self.box, self.perm)
