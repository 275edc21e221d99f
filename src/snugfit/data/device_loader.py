"""The device loader: batches decoded in worker processes, augmented on the training device.

The work is split where it is cheapest:

* worker processes (CPU) decode each file, resize it once with Pillow and hand
  over a small uint8 image (``presize`` for training, ``size`` for validation);
* the main process copies the uint8 batch to the training device (4x less data
  than float32) and runs all augmentation there on whole batches
  (`snugfit.data.augment`).

With a `snugfit.data.cache.PixelCache`, the decoded squares are also kept on disk:
the first epoch decodes each file once (a pre-pass with a progress bar) and later
epochs, and later runs, read pixels in the main process instead of decoding in
workers.

A `DeviceLoader` holds values, not its owner: its items, whether it trains, and a
frozen `LoaderSettings` that the owner replaces (`DeviceLoader.configure`) when a
setting changes; the change takes effect at the next epoch.
"""

from __future__ import annotations

import copy
import functools
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, SequentialSampler

from snugfit import distributed
from snugfit.data.augment import augment_params, batch_augment, center_batch
from snugfit.data.cache import PixelCache
from snugfit.data.datasets import (
    EpochShuffle,
    ImageDataset,
    ShardBatches,
    SkipList,
    collate,
    make_dataloader,
    mix_seed,
)
from snugfit.data.progress import progress
from snugfit.data.settings import LoaderSettings
from snugfit.data.settings import resolve_device as resolve_device
from snugfit.errors import SnugfitError, UnreadableImage
from snugfit.sizes import Size
from snugfit.tasks import Task

# `resolve_device` is re-exported: it lived here before settings.py was split out.


class DeviceLoader:
    """Batches of normalised images on the training device.

    Wraps a torch ``DataLoader`` whose workers decode files to uint8; each batch
    is copied to the device and augmented there (training) or only normalised
    (validation). Settings are read when an epoch starts, so a new
    `LoaderSettings` (`configure`: the model's mean/std, progressive resizing)
    takes effect at the next epoch.

    Iterating yields ``(x, y)``: float32 ``(B, 3, height, width)`` and the task's
    targets (long ``(B,)``; multi-label: multi-hot float32 ``(B, C)``). The last
    batch may be short. The training order and augmentations of epoch ``e``
    depend only on the seed and ``e``; ``epoch`` counts the epochs started (set it
    to resume); `batches` gives any epoch's batches without counting.

    With a pixel cache, an epoch first checks which items are cached (one
    ``stat`` of each file and one ``utime`` of each entry), decodes and stores the
    missing ones in a pre-pass over the workers (with a progress bar), then reads
    every batch from the cache in the main process: reading pixels is so cheap
    that starting and feeding worker processes would cost more. If some items
    cannot be cached (the cache is full), the epoch runs through the workers as
    without a cache.

    Args:
        items: ``(path, label)`` pairs.
        train: Shuffle, decode at ``presize`` and augment (else: in order, at ``size``).
        settings: The current settings.
        task: What a label's target is.
        n_classes: Number of classes.
        skips: Where unreadable files are recorded (shared with the other loader).
        cache: The pixel cache (None: decode every epoch).
        cache_since_ns: Cache entries used since then belong to this run: making
            room for new entries never deletes them.
    """

    def __init__(
        self,
        items: Sequence[tuple[Path, Any]],
        train: bool,
        settings: LoaderSettings,
        *,
        task: Task,
        n_classes: int,
        skips: SkipList,
        cache: PixelCache | None = None,
        cache_since_ns: int = 0,
    ):
        self.items = list(items)
        self.train = train
        self.settings = settings
        self.task, self.n_classes = task, n_classes
        self.skips, self.cache, self.cache_since_ns = skips, cache, cache_since_ns
        self.epoch = 0
        self._collate = functools.partial(collate, task=task)
        # Nothing refers back to this loader: dropping it drops the DataLoader, and
        # its workers shut down at once.
        self._dataloader: DataLoader | None = None
        self._key: tuple | None = None
        self.cache_hits = self.cache_misses = 0
        self.cache_filled = 0  # files this process decoded into the cache

    def as_evaluated(self) -> DeviceLoader:
        """A loader of these items as evaluation sees them: in order, at ``size``, with
        the validation transform (resize, central crop), never augmented; it shares
        the settings, skipped files and cache. (``batches(augment=False)`` of a
        training loader resizes the whole decoded ``presize`` square instead.)"""
        return DeviceLoader(self.items, False, self.settings, task=self.task,
                            n_classes=self.n_classes, skips=self.skips, cache=self.cache,
                            cache_since_ns=self.cache_since_ns)  # fmt: skip

    def with_preprocessing(self, preprocessing) -> DeviceLoader:
        """A loader of these items as this one, but with ``preprocessing`` (a model's
        mean and std); it shares the skipped files and cache, not the workers."""
        new = copy.copy(self)
        new.configure(self.settings.replace(preprocessing=preprocessing))
        new.close()  # its own DataLoader, built when it is first iterated
        return new

    def configure(self, settings: LoaderSettings) -> None:
        """Use ``settings`` from the next epoch (or batch) on."""
        self.settings = settings

    @property
    def bs(self) -> int:
        """Batch size."""
        return self.settings.bs

    @property
    def device(self) -> torch.device:
        """Device batches are delivered to."""
        return self.settings.device

    @property
    def skipped(self) -> dict[str, str]:
        """Unreadable files seen so far (shared with the other loader), path → reason."""
        return self.skips.files

    def _decode_size(self) -> Size:
        p = self.settings.preprocessing
        return p.train_size if self.train else p.size

    def _dataset(self, train: bool, size: Size) -> ImageDataset:
        """The items as a dataset decoding for training (or validation) at ``size``."""
        return ImageDataset(
            self.items,
            train,
            size,
            self.settings.preprocessing.crop_pct,
            self.cache,
            task=self.task,
            n_classes=self.n_classes,
        )

    @property
    def dataset(self) -> ImageDataset:
        """The dataset for the current settings."""
        return self.dataloader().dataset

    def dataloader(self) -> DataLoader:
        """The current torch DataLoader, rebuilt when a setting its workers hold changes."""
        s = self.settings
        where = (distributed.rank(), distributed.world_size())  # torchrun: this rank's shard
        key = (self._decode_size(), s.preprocessing.crop_pct, s.bs, s.num_workers,
               s.device.type, s.seed, where)  # fmt: skip
        if self._dataloader is None or key != self._key:
            self.close()
            ds = self._dataset(self.train, self._decode_size())
            order = EpochShuffle(len(ds), s.seed) if self.train else None
            batching: dict[str, Any] = {"batch_size": s.bs, "sampler": order}
            if where[1] > 1:
                order = order or SequentialSampler(ds)
                batching = {"batch_sampler": ShardBatches(order, s.bs, *where)}
            self._dataloader = make_dataloader(
                ds,
                **batching,
                num_workers=s.num_workers,
                device=s.device,
                collate_fn=self._collate,
                persistent=True,
            )
            self._key = key
        return self._dataloader

    def close(self) -> None:
        """Shut down the worker processes now (they restart on the next iteration)."""
        self._dataloader = None  # the DataLoader's last reference: its workers exit

    def __len__(self) -> int:
        return math.ceil(len(self.items) / self.bs)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        epoch = self.epoch
        self.epoch += 1
        return self.batches(epoch)

    def batches(self, epoch: int, augment: bool | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """Epoch ``epoch``'s batches, without moving the ``epoch`` counter.

        Args:
            epoch: Which epoch's order and augmentations (training).
            augment: None: as the settings say; False: resized and normalised only.
                A validation loader never augments.
        """
        return self._batches(epoch, augment=augment)

    def one_batch(self, augment: bool | None = None) -> tuple[Tensor, Tensor]:
        """One batch, without counting an epoch (so training stays reproducible);
        ``augment`` as in `batches`."""
        return self.first_images(1, augment)

    def first_images(self, n: int, augment: bool | None = None) -> tuple[Tensor, Tensor]:
        """The first whole batches that hold at least ``n`` images (all of them if
        fewer), in the order of an epoch that is never trained (shuffled, for a
        training loader), without counting an epoch; ``augment`` as in `batches`."""
        xs, ys, count = [], [], 0
        it = self._batches(-1, prepass=False, augment=augment)  # not the whole set
        try:
            for x, y in it:
                xs.append(x)
                ys.append(y)
                count += len(x)
                if count >= n:
                    break
        finally:
            it.close()
        if not count:
            raise SnugfitError("no readable images to make a batch from")
        return torch.cat(xs), torch.cat(ys)

    def decoded_batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        """The files decoded as for training, in order: uint8 ``(B, 3, *presize)``
        batches on the device (not augmented, not normalised) and their targets.

        Unreadable files are left out and recorded in ``skipped``.
        """
        s = self.settings
        ds = self._dataset(True, s.preprocessing.train_size)
        loader = make_dataloader(
            ds,
            batch_size=s.bs,
            num_workers=s.num_workers,
            device=s.device,
            collate_fn=self._collate,
        )
        for x, y, bad in loader:
            for path, reason in bad:
                self.skips.skip(path, reason)
            if x is not None:
                yield self._split(*self._to_device(x, y))

    def _batches(
        self, epoch: int, prepass: bool = True, augment: bool | None = None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        s = self.settings
        dl = self.dataloader()
        if isinstance(dl.batch_sampler.sampler, EpochShuffle):
            dl.batch_sampler.sampler.epoch = epoch
        # One stream for the epoch's augmentations. Under torchrun every rank draws
        # each *global* batch's parameters from the same stream and applies its
        # shard's rows: the ranks together augment exactly as one process would.
        gen = torch.Generator().manual_seed(mix_seed(s.seed, epoch, 1))
        shards = dl.batch_sampler if isinstance(dl.batch_sampler, ShardBatches) else None
        params = s.augmentation.params()
        augment = self.train and (s.augmentation.enabled if augment is None else augment)
        keys = self._cached_keys(dl.dataset, prepass)
        source = dl if keys is None else self._read_cached(dl, keys)
        for b, (x, y, bad) in enumerate(source):
            for path, reason in bad:
                self.skips.skip(path, reason)
            draw = shards.draw(b, 0 if x is None else len(x)) if shards is not None else None
            if x is None:
                if shards is not None:
                    if augment:  # keep this rank's stream in step with the others
                        augment_params(draw[0], generator=gen, **params)
                    yield self._empty_batch()  # every rank takes every step together
                continue
            x, y = self._split(*self._to_device(x, y))
            yield self._to_batch(x, y, gen, draw, augment)

    def _to_device(self, x: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor | None]:
        device = self.settings.device
        x = x.to(device, non_blocking=True)
        return x, (y.to(device, non_blocking=True) if y is not None else None)

    def _split(self, x: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        """A collated batch's images and targets (segmentation: out of the pixels)."""
        return x, y

    def _to_batch(
        self, x: Tensor, y: Tensor, gen: torch.Generator, draw: tuple | None, augment: bool
    ) -> tuple[Tensor, Tensor]:
        """A uint8 batch on the device as the model's input: augmented, or resized and
        normalised; ``gen`` and ``draw`` as in `batch_augment`."""
        p = self.settings.preprocessing
        if augment:
            params = self.settings.augmentation.params()
            x = batch_augment(x, p.size, generator=gen, mean=p.mean, std=p.std, draw=draw, **params)
        else:
            x = center_batch(x, p.size, p.mean, p.std)
        return x, y

    def _empty_batch(self) -> tuple[Tensor, Tensor]:
        """No images: a rank's empty shard (or one whose images were all unreadable)."""
        h, w = self.settings.preprocessing.hw
        x = torch.empty((0, 3, h, w), device=self.device)
        return x, self.task.empty_targets(self.n_classes, self.device)

    # -- pixel cache ----------------------------------------------------------

    def _cached_keys(self, ds: ImageDataset, prepass: bool) -> list[str | None] | None:
        """Cache keys of every item if all readable ones are cached (after a pre-pass), else None.

        A None key marks an item to decode (a file known to be unreadable, or
        one that vanished), so it is reported as without a cache.
        """
        cache = ds.cache
        if cache is None:
            return None
        keys = [ds.cache_key(i) for i in range(len(ds))]
        # utime is the existence check and marks the entry as recently used, so
        # making room for missing entries (`_fill`) deletes other, older ones first.
        present = [k is not None and ds.is_cached(k) for k in keys]
        skipped = self.skips
        missing = [
            i
            for i, (k, ok) in enumerate(zip(keys, present, strict=True))
            if not ok and k is not None and ds.path(i) not in skipped
        ]
        self.cache_hits += sum(present)
        self.cache_misses += len(missing)
        if prepass and distributed.active():
            # Under torchrun the ranks share the pre-pass: rank 0's list of missing
            # files (ranks look at slightly different moments, while others write)
            # is split, each rank decodes every world-th, and all look again once
            # every rank is done.
            mine, missing = missing, distributed.from_main(missing)
            stored = self._fill(ds, missing[distributed.rank() :: distributed.world_size()], keys)
            distributed.barrier()
            looked = sorted(set(mine) | set(missing))
            for i in looked:
                present[i] = i in stored or ds.is_cached(keys[i])
            missing = [i for i in looked if not present[i] and ds.path(i) not in skipped]
        elif missing and prepass:
            stored = self._fill(ds, missing, keys)
            missing = [i for i in missing if i not in stored]
            # Unreadable files found by the pre-pass are now in `skipped`: not missing.
            missing = [i for i in missing if ds.path(i) not in skipped]
            for i in stored:
                present[i] = True
        if missing:
            return None  # not all cached: decode the rest in the workers
        return [k if ok else None for k, ok in zip(keys, present, strict=True)]

    def _fill(self, ds: ImageDataset, missing: list[int], keys: list[str | None]) -> set[int]:
        """Decode and cache ``missing`` items in the workers, with a progress bar.

        Returns:
            The items stored.
        """
        cache, console = ds.cache, self.settings.console
        entry = ds.entry_bytes
        # Entries of other datasets or sizes make way for the missing ones; the
        # ones this run touched or wrote stay.
        fits = cache.make_room(len(missing) * entry, self.cache_since_ns) // entry
        if fits < len(missing):
            cache.warn_uncached(
                f"{len(missing) - fits} of {len(ds)} images are not cached and are decoded "
                "every epoch"
            )
        missing = missing[:fits]
        if not missing:
            return set()
        self.cache_filled += len(missing)
        loader = make_dataloader(
            _Fill(ds, [(i, keys[i]) for i in missing]),
            batch_size=min(self.bs, 16),  # small chunks: even load and a smooth bar
            num_workers=min(self.settings.num_workers, len(missing)),
            device=self.device,
            collate_fn=_as_list,
        )
        stored: set[int] = set()
        start = time.perf_counter()
        with progress(console, len(missing), "decoding into the cache") as advance:
            for results in loader:
                for i, ok, reason in results:
                    if reason is not None:
                        self.skips.skip(ds.path(i), reason)
                    elif ok:
                        stored.add(i)
                advance(len(results))
        if not console.is_terminal:  # the bar is transient; a log file gets one line
            seconds = time.perf_counter() - start
            console.print(
                f"cached {len(stored)} decoded images in {seconds:.1f} s "
                f"({len(stored) * entry / 1e6:.1f} MB)",
                highlight=False,
            )
        cache.make_room(0)  # the workers wrote: measure again (and trim if others overfilled)
        return stored

    def _read_cached(
        self, dl: DataLoader, keys: list[str | None]
    ) -> Iterator[tuple[Tensor | None, Tensor | None, list[tuple[str, str]]]]:
        """`collate`-style batches read from the cache in this process, in ``dl``'s order."""
        ds: ImageDataset = dl.dataset
        pin = self.device.type == "cuda"
        for idx in dl.batch_sampler:
            x = torch.empty((len(idx), *ds.shape), dtype=torch.uint8, pin_memory=pin)
            y, bad = [], []
            for i in idx:
                row = x[len(y)]
                key = keys[i]
                if key is None or not ds.read_cached(key, row.numpy()):
                    # Trimmed by another process, or an unreadable file: decode
                    # (and re-cache) it here; a failure is dropped as in `collate`.
                    try:
                        row.copy_(ds.load(i, key))
                    except UnreadableImage as e:
                        bad.append((ds.path(i), e.reason))
                        continue
                y.append(ds.target(i))
            if not y:
                yield None, None, bad
                continue
            yield x[: len(y)], self._stack_targets(y), bad

    def _stack_targets(self, targets: list) -> Tensor | None:
        """The targets of a batch read from the cache, as `collate` stacks them."""
        return self.task.stack_targets(targets)


class _Fill(Dataset):
    """The cache pre-pass: decode and store items; yields ``(index, stored, reason)``."""

    def __init__(self, ds: ImageDataset, todo: Sequence[tuple[int, str]]):
        self.ds, self.todo = ds, list(todo)

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, j: int) -> tuple[int, bool, str | None]:
        i, key = self.todo[j]
        try:
            x = self.ds.decode(i)
        except UnreadableImage as e:
            return i, False, e.reason
        return i, self.ds.store(key, x), None


def _as_list(samples: list) -> list:
    return samples  # module level, so spawned workers can import it
