"""How images become model inputs: one frozen value, saved with the model.

`Preprocessing` holds the input ``size`` (a side, or ``(height, width)``: see
`snugfit.sizes`), the training decode size ``presize`` (None: about 15% larger than
``size``, see `auto_presize`), the validation ``crop_pct`` and the normalisation
``mean`` and ``std``. The loaders own the current one
(``dls.preprocessing``); a learner's saved model carries it (``snugfit.json``) so
that prediction needs no training data. Changing a setting makes a new value
(`Preprocessing.replace`); nobody edits one in place.

>>> p = Preprocessing(224)
>>> p.train_size, p.replace(size=128).train_size, p.replace(size=(1400, 2100)).train_size
(256, 144, (1608, 2416))
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
    """

    size: Size
    presize: Size | None = None
    mean: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN
    std: tuple[float, float, float] = IMAGENET_DEFAULT_STD
    crop_pct: float = 0.875

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

    @property
    def train_size(self) -> Size:
        """What training images are decoded to: ``presize``, or automatic."""
        return self.presize if self.presize is not None else auto_presize(self.size)

    @property
    def hw(self) -> tuple[int, int]:
        """The model input's ``(height, width)``."""
        return as_hw(self.size)

    def replace(self, **changes) -> Preprocessing:
        """A copy with some fields changed (and checked)."""
        return dataclasses.replace(self, **changes)

    def to_config(self) -> dict:
        """The fields a saved model needs to predict, as plain JSON values."""
        return {
            "size": self.size if isinstance(self.size, int) else list(self.size),
            "crop_pct": self.crop_pct,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_config(cls, cfg: dict) -> Preprocessing:
        """The inverse of `to_config` (extra keys are ignored)."""
        return cls(
            size=check_size("size", cfg["size"]),
            mean=tuple(cfg["mean"]),
            std=tuple(cfg["std"]),
            crop_pct=cfg["crop_pct"],
            presize=cfg.get("presize"),
        )
