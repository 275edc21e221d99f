"""What a loader works with besides its items: `LoaderSettings`, and the device (`resolve_device`).

The loaders (`snugfit.data.loaders`, `snugfit.data.segmentation`) own one frozen
`LoaderSettings` and push a new one to their `DeviceLoader` s when a setting changes.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from rich.console import Console

from snugfit import distributed
from snugfit.data.augment import Augmentation
from snugfit.data.preprocessing import Preprocessing, check_positive_int
from snugfit.errors import SnugfitError


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a torch device that exists here; None: CUDA when present, else CPU.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if device is None:
        return distributed.device_for(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise SnugfitError(
            f"device: cannot read {device!r}; use cpu, cuda or cuda:N (or any torch device)"
        ) from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise SnugfitError(f"device: {device!r} asked for, but CUDA is not available here")
        if dev.index is not None and dev.index >= n:
            raise SnugfitError(f"device: {device!r} asked for, but there are only {n} GPU(s)")
    return distributed.device_for(dev)  # under torchrun, "cuda" is this process's GPU


@dataclass(frozen=True)
class LoaderSettings:
    """What a `DeviceLoader` works with besides its items: one frozen value, replaced whole.

    Attributes:
        bs: Batch size.
        preprocessing: Input size, training decode size, validation crop, normalisation.
        augmentation: The training augmentation.
        seed: Seed of the training order and augmentations.
        device: Where batches are delivered.
        num_workers: Decoding processes (None: ``min(4, cpu count)``).
        console: Where the cache pre-pass shows its progress.
    """

    bs: int
    preprocessing: Preprocessing
    augmentation: Augmentation
    seed: int
    device: torch.device
    num_workers: int | None
    console: Console

    def __post_init__(self):
        object.__setattr__(self, "bs", check_positive_int("bs", self.bs))
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise SnugfitError(f"seed: must be an integer, got {self.seed!r}")
        object.__setattr__(self, "seed", int(self.seed))
        workers = self.num_workers
        if workers is None:
            workers = min(4, os.cpu_count() or 1)
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise SnugfitError(f"num_workers: must be an integer >= 0, got {workers!r}")
        object.__setattr__(self, "num_workers", workers)
        object.__setattr__(self, "device", torch.device(self.device))

    def replace(self, **changes: Any) -> LoaderSettings:
        """A copy with some fields changed (and checked)."""
        return dataclasses.replace(self, **changes)
