"""The loaders of an image classification dataset: `ImageDataLoaders`.

An `ImageDataLoaders` owns what both of its loaders share: the items and their
classes (``vocab``), the task (`snugfit.tasks`: single- or multi-label targets),
the skipped files, the pixel cache, and the settings: a `Preprocessing` (size,
presize, crop, normalisation), an `Augmentation` and the batch size, seed, device
and workers, all in one frozen `LoaderSettings`. Changing a setting
(``dls.mean = ...``, ``dls.set_size(64)``, ``dls.augment = False``) makes new
settings and pushes them to its two `DeviceLoader` s (`configure`); the loaders
never read their owner.

Unreadable files never stop training: they are found at construction time (a
cheap header check, or the data check's full decode: `from_check`) or at decode
time (truncated data), reported once through the ``snugfit`` logger and recorded
in ``ImageDataLoaders.skipped``.

Finding the items and their labels and splitting them is `snugfit.data.items`;
batches are made by `snugfit.data.device_loader`; what these loaders share with
`snugfit.data.segmentation.SegmentationDataLoaders` is `snugfit.data.loaders_base`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from PIL import Image
from rich.console import Console
from torch import Tensor

from snugfit.data.augment import IMAGENET_MEAN, IMAGENET_STD, Augmentation, denormalize
from snugfit.data.constructors import LoaderConstructors
from snugfit.data.decode import prepare_for_predict
from snugfit.data.device_loader import DeviceLoader, LoaderSettings
from snugfit.data.device_loader import resolve_device as resolve_device
from snugfit.data.grid import save_grid
from snugfit.data.loaders_base import DataLoadersBase
from snugfit.data.preprocessing import Preprocessing, check_positive_int
from snugfit.data.usable import usable_items
from snugfit.sizes import Size
from snugfit.tasks import MultiLabel, SingleLabel

# `resolve_device` is re-exported: it lived here before device_loader.py was split out.

logger = logging.getLogger("snugfit")


class ImageDataLoaders(LoaderConstructors, DataLoadersBase):
    """Training and validation loaders for image classification.

    Build one with `from_folder`, `from_name_re`, `from_csv`, `from_lists`,
    `from_path_func`, or `from_check` (from a data check's report). Files whose
    header is unreadable are left out (and reported) at construction; files that
    fail to decode later are skipped when met. Both end up in ``skipped``.

    Multi-label data (``multi_label=True``: `from_csv` with ``label_delim``, or
    a label function returning lists) has a set of classes per image, possibly
    empty; its targets are multi-hot float32 ``(B, C)`` tensors and a learner
    trains it with sigmoid outputs and binary cross-entropy.

    The settings are read (and set) as attributes: ``bs``, ``seed``, ``device``,
    ``num_workers``, ``console``; ``size``, ``presize``, ``mean``, ``std``,
    ``crop_pct`` (``preprocessing``); ``augment``, ``min_scale``, ``max_rotate``,
    ``flip``, ``max_lighting`` (``augmentation``).

    Args:
        train_items: ``(path, label index)`` pairs for training (multi-label:
            ``(path, tuple of label indices)``).
        valid_items: The same for validation.
        vocab: Class names, indexed by label.
        path: Where the data came from (for messages).
        bs: Batch size.
        size: The model input: a side (square) or ``(height, width)``.
        presize: What training images are decoded to before augmentation (a side
            or ``(height, width)``, the aspect of ``size``); None follows ``size``
            (about 15% larger on each side).
        crop_pct: Center-crop fraction of the validation transform; None: the
            model's (`vision_learner` sets it from the model's pretrained
            configuration; 0.875 until then). A value given here is kept.
        seed: Seed for shuffling and augmentation.
        num_workers: Decoding processes; default ``min(4, cpu count)``.
        device: Device batches are delivered to; default CUDA when available.
        min_scale: Smallest random-crop area fraction.
        max_rotate: Largest random rotation, in degrees.
        flip: Random horizontal flips.
        max_lighting: Largest relative brightness/contrast change.
        augment: Augment training batches (False: only resize and normalise).
        mean: Normalisation mean (the learner sets the model's).
        std: Normalisation standard deviation (the learner sets the model's).
        cache: Keep decoded images in a `snugfit.data.cache.PixelCache`, so files
            are decoded once, not every epoch (False: decode every epoch, write nothing).
        cache_size: Bound on the cache folder, e.g. ``"20GB"`` or ``"512MiB"``;
            default ``$SNUGFIT_CACHE_SIZE``, else 20 GB; 0 turns the cache off.
        cache_root: Cache folder; default ``cache_dir() / "images"``.
        console: Where the cache pre-pass shows its progress (default: stderr);
            give the learner's console to share its display.
        unreadable: Files already known to be unreadable, path → reason (e.g.
            `snugfit.data.check_report.CheckReport.unreadable_files`): left out and
            put in ``skipped`` without being opened or reported again.
        multi_label: Items carry tuples of label indices (see above); one class
            is then enough.
        checked: The items come from a data check, which decoded every file: no
            header is opened here (files in ``unreadable`` are still left out).
    """

    def __init__(
        self,
        train_items: Sequence[tuple[Path, int]],
        valid_items: Sequence[tuple[Path, int]],
        vocab: Sequence[str],
        *,
        path: str | os.PathLike | None = None,
        bs: int = 32,
        size: Size = 224,
        presize: Size | None = None,
        crop_pct: float | None = None,
        seed: int = 42,
        num_workers: int | None = None,
        device: str | torch.device | None = None,
        min_scale: float = 0.75,
        max_rotate: float = 10.0,
        flip: bool = True,
        max_lighting: float = 0.2,
        augment: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        cache: bool = True,
        cache_size: str | int | None = None,
        cache_root: str | os.PathLike | None = None,
        console: Console | None = None,
        unreadable: Mapping[str, str] | None = None,
        multi_label: bool = False,
        checked: bool = False,
    ):
        self._setup(
            path=path,
            task=MultiLabel() if multi_label else SingleLabel(),
            settings=LoaderSettings(
                bs=check_positive_int("bs", bs),
                preprocessing=Preprocessing(
                    size, presize, mean, std, 0.875 if crop_pct is None else crop_pct
                ),
                augmentation=Augmentation(augment, min_scale, max_rotate, flip, max_lighting),
                seed=seed,
                device=resolve_device(device),
                num_workers=num_workers,
                console=console or Console(stderr=True),
            ),
            vocab=vocab,
            unreadable=unreadable,
            cache=cache,
            cache_size=cache_size,
            cache_root=cache_root,
        )
        self.crop_pct_given = crop_pct is not None  # vision_learner keeps it
        self.train_items, self.valid_items = usable_items(
            train_items,
            valid_items,
            self.vocab,
            multi_label=self.multi_label,
            skips=self.skips,
            where=self.path if self.path is not None else "data",
            checked=checked,
        )
        self.train, self.valid = self._device_loaders(self.settings)

    def _device_loaders(self, settings: LoaderSettings) -> tuple[DeviceLoader, DeviceLoader]:
        """A training and a validation loader of these items, with ``settings``."""
        shared = {
            "task": self.task,
            "n_classes": self.c,
            "skips": self.skips,
            "cache": self.cache,
            "cache_since_ns": self.cache_since_ns,
        }
        return (
            DeviceLoader(self.train_items, True, settings, **shared),
            DeviceLoader(self.valid_items, False, settings, **shared),
        )

    # -- use ----------------------------------------------------------------

    def test_tensor(
        self, images: str | os.PathLike | Image.Image | Sequence[str | os.PathLike | Image.Image]
    ) -> Tensor:
        """Files or PIL images as a normalised CPU batch, with the validation transform."""
        return prepare_for_predict(images, self.size, self.crop_pct, self.mean, self.std)

    def show_batch(
        self, path: str | os.PathLike = "batch.png", n: int = 16, split: str = "train"
    ) -> Path:
        """Save a grid of ``n`` images of a batch, titled with their classes.

        Args:
            path: PNG file to write.
            n: Number of images (at most one batch).
            split: ``"train"`` (augmented) or ``"valid"``.

        Returns:
            The path written.
        """
        loader = self.loader(split)
        n = check_positive_int("n", n)
        x, y = loader.one_batch()
        x = denormalize(x[:n].float().cpu(), self.mean, self.std).clamp(0, 1)
        titles = [self.task.title(lab, self.vocab) for lab in y[:n].cpu().tolist()]
        return save_grid(x.permute(0, 2, 3, 1).numpy(), titles, path)

    def __repr__(self) -> str:
        return (
            f"ImageDataLoaders({len(self.train_items)} train, {len(self.valid_items)} valid, "
            f"{self.c} classes{' (multi-label)' if self.multi_label else ''}, bs={self.bs}, size={self.size}, presize={self.presize}, "
            f"device={self.device}, skipped={len(self.skipped)})"
        )
