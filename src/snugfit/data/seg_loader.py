"""Segmentation batches: an image and its mask decoded, cached and augmented together.

A `SegmentationDataset` decodes each ``(image, mask)`` pair with
`snugfit.data.masks.decode_pair` into one uint8 ``(4, H, W)`` array (RGB, then the
mask) at the working ``size``, so the mask travels with its image through the
workers, the batch and the copy to the device, exactly as a classification image
does. In the pixel cache the two are separate entries beside each other: the image
under the ``("segmentation", size)`` decode parameters, the mask under ``("mask",
size, classes)``, each keyed by its own file (an edited mask is decoded again, its
image is not).

A `SegmentationDeviceLoader` splits the pixels on the device: training batches get
one geometric transform per image applied to the image and its mask
(`snugfit.data.augment.batch_augment_masks`: a random ``crop`` window out of the
image at ``size``, flip, rotation and zoom); validation batches are the whole image
at ``size``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from snugfit.data.augment import batch_augment_masks, center_batch, center_crop
from snugfit.data.datasets import ImageDataset, PathList, collate
from snugfit.data.device_loader import DeviceLoader
from snugfit.data.masks import decode_pair, read_binary
from snugfit.sizes import Size, as_hw


class SegmentationDataset(ImageDataset):
    """``(image, mask)`` pairs decoded together to uint8 ``(4, H, W)`` arrays.

    Their targets are in their pixels (channel 3): `target` is None and `collate`
    is given no task.

    Args:
        items: ``(image file, mask file)`` pairs.
        train: Whether the pairs are for training (both splits decode the same way).
        size: The decode size, a side or ``(height, width)``.
        cache: The pixel cache (None: always decode).
        n_classes: The number of classes: a mask value that is neither a class nor
            255 makes its pair unreadable.
        colours: Colour masks' class colours (`snugfit.data.masks.open_mask`).
    """

    def __init__(
        self, items, train: bool, size: Size, cache=None, n_classes: int = 0, colours=None
    ):
        self.colours = None if colours is None else tuple(tuple(c) for c in colours)
        super().__init__(items, train, size, 1.0, cache, n_classes=n_classes)

    def _pack_labels(self, labels: list) -> None:
        self.labels = None
        self._masks = PathList(labels)

    def label(self, i: int) -> str:
        """Item ``i``'s mask file."""
        return self._masks[i]

    def target(self, i: int) -> None:
        return None  # the mask is channel 3 of the pixels

    @property
    def items(self) -> list[tuple[Path, Path]]:
        return [(Path(self.path(i)), Path(self.label(i))) for i in range(len(self))]

    @property
    def shape(self) -> tuple[int, int, int]:
        """One decoded pair's shape, ``(4, height, width)``."""
        return (4, *as_hw(self.size))

    @property
    def entry_bytes(self) -> int:
        h, w = as_hw(self.size)
        return 4 * h * w + 2 * 128  # two entries, each with its .npy header

    def cache_key(self, i: int) -> tuple[str, str] | None:
        """``(image key, mask key)`` of item ``i``; None without a cache or a file."""
        if self.cache is None:
            return None
        try:
            image = self.cache.key_for(self.path(i), ("segmentation", self.size))
            params = ("mask", self.size, self.n_classes)
            mask = self.cache.key_for(
                self.label(i), (*params, self.colours) if self.colours else params
            )
        except OSError:
            return None  # decoding will report what is wrong with the files
        return image, mask

    def is_cached(self, key: tuple[str, str]) -> bool:
        image, mask = self.cache.touch(key[0]), self.cache.touch(key[1])  # mark both used
        return image and mask

    def read_cached(self, key: tuple[str, str], out: np.ndarray) -> bool:
        return self.cache.read_into(key[0], out[:3]) and self.cache.read_into(key[1], out[3])

    def store(self, key: tuple[str, str], x: Tensor) -> bool:
        pixels = x.numpy()
        return self.cache.put(key[0], pixels[:3]) and self.cache.put(key[1], pixels[3])

    def decode(self, i: int) -> Tensor:
        return decode_pair(
            self.path(i), self.label(i), self.size, self.n_classes or None, self.colours
        )

    def load(self, i: int, key: tuple[str, str] | None = None) -> Tensor:
        key = key or self.cache_key(i)
        if key is not None:
            x = torch.empty(self.shape, dtype=torch.uint8)
            if self.read_cached(key, x.numpy()):
                return x
        x = self.decode(i)
        if key is not None:
            self.store(key, x)
        return x


class SegmentationDeviceLoader(DeviceLoader):
    """Batches of normalised images and their masks on the training device.

    Iterating yields ``(x, y)``: training, float32 ``(B, 3, *crop)`` and long
    ``(B, *crop)`` (a random window of the image at ``size``, flipped, rotated and
    zoomed with its mask; without augmentation, the central window); validation,
    ``(B, 3, *size)`` and ``(B, *size)``: the whole image. Mask values are class
    indices and 255 (void), never blended; for binary masks (the task's ``binary``),
    255 is class 1, read so as a batch arrives, before augmentation. Everything else
    is `DeviceLoader`'s.
    """

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._collate = functools.partial(collate, task=None)

    def _decode_size(self) -> Size:
        return self.settings.preprocessing.size  # training crops come out of the whole image

    def _dataset(self, train: bool, size: Size) -> SegmentationDataset:
        return SegmentationDataset(
            self.items, train, size, self.cache, self.n_classes, self.task.colours
        )

    def _stack_targets(self, targets: list) -> None:
        return None

    def _split(self, x: Tensor, y: None) -> tuple[Tensor, Tensor]:
        mask = x[:, 3]
        return x[:, :3], read_binary(mask) if self.task.binary else mask

    def _to_batch(
        self, x: Tensor, y: Tensor, gen: torch.Generator, draw: tuple | None, augment: bool
    ) -> tuple[Tensor, Tensor]:
        p = self.settings.preprocessing
        if not self.train:
            return center_batch(x, p.size, p.mean, p.std), y.long()
        crop = p.train_input
        if not augment:
            x, y = center_crop(x, crop), center_crop(y, crop)
            return center_batch(x, crop, p.mean, p.std), y.long()
        (in_h, in_w), (h, w) = x.shape[-2:], as_hw(crop)
        return batch_augment_masks(
            x, y, crop, extent=(h / in_h, w / in_w), generator=gen, mean=p.mean, std=p.std,
            draw=draw, **self.settings.augmentation.params(),
        )  # fmt: skip

    def _empty_batch(self) -> tuple[Tensor, Tensor]:
        p = self.settings.preprocessing
        h, w = as_hw(p.train_input if self.train else p.size)
        x = torch.empty((0, 3, h, w), device=self.device)
        return x, torch.empty((0, h, w), dtype=torch.long, device=self.device)

    def decoded_batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        """The pairs decoded at ``size``, in order: uint8 ``(B, 3, *size)`` images on the
        device (not augmented, not normalised) and long ``(B, *size)`` masks."""
        for x, y in super().decoded_batches():
            yield x, y.long()
