"""What `ImageDataLoaders` and `SegmentationDataLoaders` share: `DataLoadersBase`.

Loaders own their items, classes (``vocab``), task, skipped files, pixel cache and
one frozen `LoaderSettings`; a setting read or assigned as an attribute (`Setting`)
reads that value or makes new settings and pushes them to the two `DeviceLoader` s
(`DataLoadersBase.configure`), which never read their owner.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from snugfit.data.augment import Augmentation
from snugfit.data.cache import PixelCache
from snugfit.data.cache import cache_size as cache_size_bytes
from snugfit.data.datasets import SkipList
from snugfit.data.device_loader import DeviceLoader
from snugfit.data.preprocessing import Preprocessing
from snugfit.data.settings import LoaderSettings
from snugfit.errors import SnugfitError
from snugfit.sizes import Size
from snugfit.tasks import Task


class Setting:
    """A loaders attribute that reads one field of its settings (or of the settings'
    preprocessing or augmentation); assigning it makes new settings and pushes them to
    both loaders (`DataLoadersBase.configure`)."""

    def __init__(self, part: str | None = None, field: str | None = None):
        self.part, self.field = part, field

    def __set_name__(self, owner: type, name: str) -> None:
        self.field = self.field or name

    def __get__(self, dls: DataLoadersBase | None, owner: type | None = None) -> Any:
        if dls is None:
            return self
        value = dls.settings if self.part is None else getattr(dls.settings, self.part)
        return getattr(value, self.field)

    def __set__(self, dls: DataLoadersBase, value: Any) -> None:
        if self.part is None:
            dls.configure(**{self.field: value})
        else:
            part = getattr(dls.settings, self.part)
            dls.configure(**{self.part: part.replace(**{self.field: value})})


class DataLoadersBase:
    """The settings, the skipped files, the cache and the two loaders of a dataset.

    A subclass's ``__init__`` calls `_setup`, vets its items, then sets ``train`` and
    ``valid`` from `_device_loaders`.
    """

    bs = Setting()
    seed = Setting()
    device = Setting()
    num_workers = Setting()
    console = Setting()
    size = Setting("preprocessing")
    mean = Setting("preprocessing")
    std = Setting("preprocessing")
    crop_pct = Setting("preprocessing")
    augment = Setting("augmentation", "enabled")
    min_scale = Setting("augmentation")
    max_rotate = Setting("augmentation")
    flip = Setting("augmentation")
    max_lighting = Setting("augmentation")

    train: DeviceLoader
    valid: DeviceLoader

    def _setup(
        self,
        *,
        path: str | os.PathLike | None,
        task: Task,
        settings: LoaderSettings,
        vocab: Sequence[str],
        unreadable: Mapping[str, str] | None,
        cache: bool,
        cache_size: str | int | None,
        cache_root: str | os.PathLike | None,
    ) -> None:
        """Set what every loaders object holds besides its items and device loaders."""
        self.path = Path(path) if path is not None else None
        self.task = task
        self.settings = settings
        self.vocab = list(vocab)
        self.skips = SkipList(unreadable)
        # Resolved even when off, so a bad cache_size is reported either way.
        max_bytes = cache_size_bytes(cache_size)
        self.cache = PixelCache(cache_root, max_bytes) if cache and max_bytes else None
        # Entries used since then belong to this run: making room never deletes
        # them. A second early, as file times come from a coarser kernel clock.
        self.cache_since_ns = time.time_ns() - 10**9

    def _device_loaders(self, settings: LoaderSettings) -> tuple[DeviceLoader, DeviceLoader]:
        """A training and a validation loader of these items, with ``settings``."""
        raise NotImplementedError

    # -- settings -----------------------------------------------------------

    @property
    def c(self) -> int:
        """Number of classes."""
        return len(self.vocab)

    @property
    def multi_label(self) -> bool:
        """Whether an image has a set of classes (the task is `MultiLabel`)."""
        return self.task.multi_label

    @property
    def skipped(self) -> dict[str, str]:
        """Files left out as unreadable (or missing), path → reason."""
        return self.skips.files

    @property
    def preprocessing(self) -> Preprocessing:
        """Input size, training decode size, validation crop and normalisation."""
        return self.settings.preprocessing

    @property
    def augmentation(self) -> Augmentation:
        """The training augmentation's settings."""
        return self.settings.augmentation

    @property
    def presize(self) -> Size:
        """Side training images are decoded to: the one set, else automatic (set None)."""
        return self.preprocessing.train_size

    @presize.setter
    def presize(self, value: Size | None) -> None:
        self.configure(preprocessing=self.preprocessing.replace(presize=value))

    def set_size(self, size: Size) -> None:
        """Change the model input size (a side or ``(height, width)``); an automatic
        ``presize`` follows it."""
        self.configure(preprocessing=self.preprocessing.replace(size=size))

    def configure(self, **changes: Any) -> None:
        """Change settings (fields of `LoaderSettings`: ``bs``, ``preprocessing``,
        ``augmentation``, ...) and push them to both loaders: they take effect at the
        next epoch."""
        self.settings = self.settings.replace(**changes)
        self.train.configure(self.settings)
        self.valid.configure(self.settings)

    def with_preprocessing(self, preprocessing: Preprocessing):
        """New loaders with ``preprocessing``, sharing these ones' items, classes, task,
        skipped files and cache (no file is opened); this object is left as it is."""
        new = copy.copy(self)
        new.settings = self.settings.replace(preprocessing=preprocessing)
        new.train, new.valid = self._device_loaders(new.settings)
        new.train.epoch, new.valid.epoch = self.train.epoch, self.valid.epoch
        return new

    # -- use ----------------------------------------------------------------

    def one_batch(self) -> tuple[Tensor, Tensor]:
        """One augmented training batch ``(x, y)`` on ``device``."""
        return self.train.one_batch()

    def loader(self, split: str) -> DeviceLoader:
        """``train`` or ``valid`` by name (a `SnugfitError` for another name)."""
        loader = {"train": self.train, "valid": self.valid}.get(split)
        if loader is None:
            raise SnugfitError(f"split: must be 'train' or 'valid', got {split!r}")
        return loader

    def cache_stats(self) -> dict[str, int]:
        """Items found in (``hits``) and missing from (``misses``) the cache, over all epochs."""
        return {
            "hits": self.train.cache_hits + self.valid.cache_hits,
            "misses": self.train.cache_misses + self.valid.cache_misses,
        }

    def close(self) -> None:
        """Shut down both loaders' worker processes now (they restart when iterated)."""
        self.train.close()
        self.valid.close()


def checked_split(report, kw: dict) -> tuple:
    """``from_check``'s start: the report's split (refused when it has none, as one read
    back from check.json), the files it found unusable joined to any given, and the
    check's seed as the default (``kw`` is updated)."""
    split = report.split
    if split is None:
        raise SnugfitError(
            f"{report.root}: the check report has no split items (read back from "
            "check.json?); run the check again"
        )
    kw.setdefault("seed", split.seed)
    return split, {**report.unreadable_files, **(kw.pop("unreadable", None) or {})}
