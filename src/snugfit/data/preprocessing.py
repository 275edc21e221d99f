"""How images become model inputs: one frozen value, saved with the model.

`Preprocessing` holds the input ``size`` (a side, or ``(height, width)``: see
`snugfit.sizes`), the training decode size ``presize`` (None: about 15% larger than
``size``, see `auto_presize`), the validation ``crop_pct``, the normalisation
``mean`` and ``std``, and for segmentation the training ``crop``: training images
are then decoded at ``size`` and randomly cropped to ``crop``, while validation and
prediction see the whole image at ``size``. The loaders own the current one
(``dls.preprocessing``); a learner's saved model carries it (``snugfit.json``) so
that prediction needs no training data. Changing a setting makes a new value
(`Preprocessing.replace`); nobody edits one in place.

>>> p = Preprocessing(224)
>>> p.train_size, p.replace(size=128).train_size, p.replace(size=(1400, 2100)).train_size
(256, 144, (1608, 2416))
>>> s = Preprocessing((1400, 2100), crop=512, crop_pct=1.0)
>>> s.train_size, s.train_input
((1400, 2100), 512)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from snugfit.errors import SnugfitError
from snugfit.sizes import Size, as_hw, check_size, format_size


def check_positive_int(name: str, value) -> int:
    """``value`` as an int if it is a positive integer; else a `SnugfitError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise SnugfitError(f"{name}: must be a positive integer, got {value!r}")
    return int(value)


def auto_presize(size: Size) -> Size:
    """The training decode size for ``size``: each side ~15% larger, on a multiple of 8
    (the aspect kept).

    Random crops and rotations then resample from real detail (not upsampled
    pixels) while decoding and copying stay cheap; and the one bilinear resample
    on the device shrinks by only ~1.15x, too little to alias.
    """
    h, w = as_hw(size)
    return check_size("presize", tuple(max(s, round(s * 1.15 / 8) * 8) for s in (h, w)))


def _stats(name: str, values: Sequence[float]) -> tuple[float, float, float]:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3:
        raise SnugfitError(f"{name}: expected 3 numbers (one per RGB channel), got {values!r}")
    return out


@dataclass(frozen=True)
class Preprocessing:
    """Input size, training decode size, validation crop and normalisation.

    Attributes:
        size: The model input: a side (square), or ``(height, width)``, in pixels.
        presize: What training images are decoded to before augmentation (a side or
            ``(height, width)``, at least ``size`` on each side); None follows
            ``size`` (`auto_presize`).
        mean: Per-channel normalisation mean (of images scaled to [0, 1]).
        std: Per-channel normalisation standard deviation.
        crop_pct: Validation: the shorter side is resized to ``round(size /
            crop_pct)`` and the central ``size`` square kept.
        crop: Segmentation: the training input, a window (a side or ``(height,
            width)``, at most ``size`` on each side) cropped out of images decoded
            at ``size``, with no ``presize``; validation sees whole images
            (``crop_pct`` 1). None: training inputs are ``size`` (classification).
    """

    size: Size
    presize: Size | None = None
    mean: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN
    std: tuple[float, float, float] = IMAGENET_DEFAULT_STD
    crop_pct: float = 0.875
    crop: Size | None = None

    def __post_init__(self):
        size = check_size("size", self.size)
        object.__setattr__(self, "size", size)
        if self.presize is not None:
            presize = check_size("presize", self.presize)
            if any(p < s for p, s in zip(as_hw(presize), as_hw(size), strict=True)):
                raise SnugfitError(
                    f"presize: must be at least size ({format_size(size)}), "
                    f"got {format_size(presize)}"
                )
            object.__setattr__(self, "presize", presize)
        if not 0 < self.crop_pct <= 1:
            raise SnugfitError(f"crop_pct: must be in (0, 1], got {self.crop_pct!r}")
        object.__setattr__(self, "crop_pct", float(self.crop_pct))
        object.__setattr__(self, "mean", _stats("mean", self.mean))
        object.__setattr__(self, "std", _stats("std", self.std))
        if self.crop is not None:
            self._check_crop(size)

    def _check_crop(self, size: Size) -> None:
        crop = check_size("crop", self.crop)
        if any(c > s for c, s in zip(as_hw(crop), as_hw(size), strict=True)):
            raise SnugfitError(
                f"crop: must fit in size ({format_size(size)}), got {format_size(crop)}"
            )
        if self.presize is not None:
            raise SnugfitError(
                "presize: not used with a crop (training images are decoded at size)"
            )
        if self.crop_pct != 1:
            raise SnugfitError(
                f"crop_pct: must be 1 with a crop (validation sees whole images), got {self.crop_pct}"
            )
        object.__setattr__(self, "crop", crop)

    @property
    def train_size(self) -> Size:
        """What training images are decoded to: ``presize``, or automatic (with a
        ``crop``: ``size``)."""
        if self.presize is not None:
            return self.presize
        return self.size if self.crop is not None else auto_presize(self.size)

    @property
    def train_input(self) -> Size:
        """The size of training batches: ``crop``, else ``size``."""
        return self.crop if self.crop is not None else self.size

    @property
    def hw(self) -> tuple[int, int]:
        """The model input's ``(height, width)``."""
        return as_hw(self.size)

    def replace(self, **changes) -> Preprocessing:
        """A copy with some fields changed (and checked)."""
        return dataclasses.replace(self, **changes)

    def to_config(self) -> dict:
        """The fields a saved model needs to predict, as plain JSON values (``crop``
        only when there is one: the tile of sliding-window prediction)."""
        out = {
            "size": _plain(self.size),
            "crop_pct": self.crop_pct,
            "mean": list(self.mean),
            "std": list(self.std),
        }
        if self.crop is not None:
            out["crop"] = _plain(self.crop)
        return out

    @classmethod
    def from_config(cls, cfg: dict) -> Preprocessing:
        """The inverse of `to_config` (extra keys are ignored)."""
        return cls(
            size=check_size("size", cfg["size"]),
            mean=tuple(cfg["mean"]),
            std=tuple(cfg["std"]),
            crop_pct=cfg["crop_pct"],
            presize=cfg.get("presize"),
            crop=cfg.get("crop"),
        )


def _plain(size: Size) -> int | list[int]:
    return size if isinstance(size, int) else list(size)
