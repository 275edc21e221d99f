"""Data pipeline: decode images in worker processes, augment batches on the device.

The work is split where it is cheapest:

* worker processes (CPU) decode each file, resize it once with Pillow and hand
  over a small uint8 square (``presize`` for training, ``size`` for validation);
* the main process copies the uint8 batch to the training device (4x less data
  than float32) and runs all augmentation there on whole batches
  (`snugfit.augment`).

With a `snugfit.cache.PixelCache` (the default), the decoded squares are also
kept on disk: the first epoch decodes each file once (a pre-pass with a progress
bar) and later epochs, and later runs, read pixels in the main process instead of
decoding in workers.

Unreadable files never stop training: they are found at construction time (a
cheap header check) or at decode time (truncated data), reported once through the
``snugfit`` logger and recorded in ``ImageDataLoaders.skipped``.

Decoding one file is `snugfit.decode`; finding the items and their labels and
splitting them is `snugfit.items`. This module holds the datasets, batching,
sampling and loaders built on them.
"""

from __future__ import annotations

import logging
import math
import os
import re
import signal
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, SequentialSampler, get_worker_info

from snugfit import distributed
from snugfit.data.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    augment_params,
    batch_augment,
    center_batch,
    denormalize,
)
from snugfit.data.cache import PixelCache
from snugfit.data.cache import cache_size as cache_size_bytes
from snugfit.data.decode import decode_train, decode_valid, header_problem, prepare_for_predict
from snugfit.data.decode import open_image as open_image
from snugfit.data.items import IMAGE_EXTENSIONS as IMAGE_EXTENSIONS
from snugfit.data.items import (
    csv_items,
    folder_items,
    image_files_in,
    list_items,
    name_re_items,
)
from snugfit.data.items import split_random as split_random
from snugfit.data.items import split_stratified as split_stratified
from snugfit.data.progress import progress
from snugfit.errors import SnugfitError, UnreadableImage

# The ``X as X`` imports above are re-exports: those public names lived here
# before decode.py and items.py were split out, and `from snugfit.data import
# open_image` (IMAGE_EXTENSIONS, split_random, split_stratified) keeps working.

logger = logging.getLogger("snugfit")

# ---------------------------------------------------------------------------
# Dataset, collate, loader
# ---------------------------------------------------------------------------


class Unreadable(NamedTuple):
    """Sentinel a dataset returns for a file that failed to decode."""

    path: str
    reason: str


class ImageDataset(Dataset):
    """``(path, label)`` items decoded to uint8 squares.

    Paths are packed into one numpy byte buffer rather than a list of Python
    objects: forked workers that touch Python objects update their reference
    counts, copying every page they sit on, so a big list slowly duplicates
    itself in each worker.

    Multi-label items (``n_classes`` given) have a tuple of class indices as
    their label, packed the same way (``labels`` is then None; see `label`);
    their target is a multi-hot float32 vector.

    Args:
        items: ``(path, label index)`` pairs, or ``(path, tuple of label indices)``.
        train: Decode with `decode_train` at ``size`` (else `decode_valid`).
        size: Output side (``presize`` for training).
        crop_pct: Center-crop fraction for validation decoding.
        cache: Where decoded squares are looked up before decoding and stored
            after (None: always decode).
        n_classes: The number of classes of multi-label items (None: single-label).
    """

    def __init__(
        self,
        items: Sequence[tuple[Path, int]] | Sequence[tuple[Path, tuple[int, ...]]],
        train: bool,
        size: int,
        crop_pct: float = 0.875,
        cache: PixelCache | None = None,
        n_classes: int | None = None,
    ):
        encoded = [os.fsencode(p) for p, _ in items]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=self._offsets[1:])
        self._paths = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        self.n_classes = n_classes
        if n_classes is None:
            self.labels = np.array([lab for _, lab in items], dtype=np.int64)
        else:
            self.labels = None
            self._label_offsets = np.zeros(len(items) + 1, dtype=np.int64)
            np.cumsum([len(lab) for _, lab in items], out=self._label_offsets[1:])
            self._label_flat = np.array([c for _, lab in items for c in lab], dtype=np.int64)
        self.train = train
        self.size = size
        self.crop_pct = crop_pct
        self.cache = cache

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def path(self, i: int) -> str:
        """The file of item ``i``."""
        return os.fsdecode(self._paths[self._offsets[i] : self._offsets[i + 1]].tobytes())

    def label(self, i: int) -> int | tuple[int, ...]:
        """Item ``i``'s class index, or tuple of class indices (multi-label)."""
        if self.labels is not None:
            return int(self.labels[i])
        return tuple(self._label_flat[self._label_offsets[i] : self._label_offsets[i + 1]].tolist())

    def target(self, i: int) -> int | np.ndarray:
        """Item ``i``'s training target: its class index, or a multi-hot float32 vector."""
        if self.labels is not None:
            return int(self.labels[i])
        t = np.zeros(self.n_classes, dtype=np.float32)
        t[self._label_flat[self._label_offsets[i] : self._label_offsets[i + 1]]] = 1.0
        return t

    @property
    def items(self) -> list[tuple[Path, int]] | list[tuple[Path, tuple[int, ...]]]:
        """The items, as ``(Path, label)`` pairs."""
        return [(Path(self.path(i)), self.label(i)) for i in range(len(self))]

    @property
    def cache_params(self) -> tuple:
        """The decode parameters, part of each cache key."""
        return ("train", self.size) if self.train else ("valid", self.size, self.crop_pct)

    def cache_key(self, i: int) -> str | None:
        """Cache key of item ``i``; None without a cache or when the file cannot be stat'ed."""
        if self.cache is None:
            return None
        try:
            return self.cache.key_for(self.path(i), self.cache_params)
        except OSError:
            return None  # decoding will report what is wrong with the file

    def decode(self, i: int) -> Tensor:
        """Decode item ``i`` from its file (no cache).

        Raises:
            UnreadableImage: The file cannot be decoded.
        """
        if self.train:
            return decode_train(self.path(i), self.size)
        return decode_valid(self.path(i), self.size, self.crop_pct)

    def load(self, i: int, key: str | None = None) -> Tensor:
        """Item ``i``'s pixels: from the cache, else decoded (and then cached).

        Args:
            i: Item index.
            key: Its cache key, if already known.

        Raises:
            UnreadableImage: The file cannot be decoded (and nothing is cached).
        """
        key = key or self.cache_key(i)
        if key is not None:
            cached = self.cache.get(key, (3, self.size, self.size))
            if cached is not None:
                return torch.from_numpy(np.array(cached))  # copy out of the read-only map
        x = self.decode(i)
        if key is not None:
            self.cache.put(key, x.numpy())
        return x

    def __getitem__(self, i: int) -> tuple[Tensor, int] | Unreadable:
        try:
            x = self.load(i)
        except UnreadableImage as e:
            # Do not kill the worker (and the epoch): let collate drop it.
            return Unreadable(self.path(i), e.reason)
        return x, self.target(i)


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
        return i, self.ds.cache.put(key, x.numpy()), None


def ignore_sigint(_worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: Ctrl-C is the main process's to handle.

    A terminal sends SIGINT to the whole process group; a worker that died of it
    would turn the main process's clean stop (finish the batch, save, resume
    command) into "DataLoader worker exited unexpectedly". The main process shuts
    its workers down itself.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _as_list(samples: list) -> list:
    return samples  # module level, so spawned workers can import it


def _stack_targets(ys: list) -> Tensor:
    """Class indices as a long ``(B,)`` tensor; multi-hot vectors as float32 ``(B, C)``."""
    if ys and isinstance(ys[0], np.ndarray):
        return torch.from_numpy(np.stack(ys))
    return torch.tensor(ys, dtype=torch.long)


def collate(
    samples: list[tuple[Tensor, int | np.ndarray] | Unreadable],
) -> tuple[Tensor | None, Tensor | None, list[tuple[str, str]]]:
    """Stack decoded samples, dropping `Unreadable` ones.

    Returns:
        ``(x, y, bad)``: uint8 images ``(B, 3, H, W)``, long labels ``(B,)`` (or
        multi-hot float32 ``(B, C)``; both None if every sample was unreadable)
        and ``(path, reason)`` pairs.
    """
    good = [s for s in samples if not isinstance(s, Unreadable)]
    bad = [(s.path, s.reason) for s in samples if isinstance(s, Unreadable)]
    if not good:
        return None, None, bad
    shape = (len(good), *good[0][0].shape)
    x = torch.empty(shape, dtype=torch.uint8)
    if get_worker_info() is not None:
        # Stack straight into shared memory, saving a copy when the batch is
        # sent to the main process.
        x.share_memory_()
    torch.stack([s[0] for s in good], out=x)
    return x, _stack_targets([s[1] for s in good]), bad


def _mix_seed(seed: int, epoch: int, stream: int) -> int:
    """A 63-bit seed for (seed, epoch, stream), different for each combination."""
    return (seed * 1_000_003 + epoch * 7_919 + stream) % (2**63)


class _EpochShuffle(Sampler[int]):
    """A random permutation fixed by ``(seed, epoch)``, set before each epoch."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(_mix_seed(self.seed, self.epoch, 0))
        return iter(torch.randperm(self.n, generator=g).tolist())


class _ShardBatches(Sampler[list[int]]):
    """This rank's part of each global batch of ``sampler``'s order (DDP training).

    Global batch ``b`` is ``bs`` items of the order, as in one process; each rank
    takes a contiguous shard (`snugfit.distributed.shard`), possibly empty, so
    every rank has as many batches as one process would.
    """

    def __init__(self, sampler, bs: int, rank: int, world: int):
        self.sampler, self.bs, self.rank, self.world = sampler, bs, rank, world

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.bs)

    def __iter__(self) -> Iterator[list[int]]:
        order = list(self.sampler)
        for start in range(0, len(order), self.bs):
            batch = order[start : start + self.bs]
            yield batch[distributed.shard(len(batch), self.rank, self.world)]

    def draw(self, b: int, n: int) -> tuple[int, slice]:
        """``(global batch size, this shard's rows)`` of batch ``b``, for `batch_augment`.

        ``n`` is how many of the shard's images were readable: a shard that lost
        some takes the first ``n`` rows of its slice (exact again once every file
        reads).
        """
        size = min(self.bs, len(self.sampler) - b * self.bs)
        rows = distributed.shard(size, self.rank, self.world)
        return size, slice(rows.start, rows.start + n)


class DeviceLoader:
    """Batches of normalised images on the training device.

    Wraps a torch ``DataLoader`` whose workers decode files to uint8; each batch
    is copied to ``device`` and augmented there (training) or only normalised
    (validation). Size, normalisation and augmentation settings are read from the
    parent `ImageDataLoaders` when an epoch starts, so changing them there (for
    example the model's mean/std, or progressive resizing) takes effect at the
    next epoch.

    Iterating yields ``(x, y)``: float32 ``(B, 3, size, size)`` and long ``(B,)``
    (multi-label: multi-hot float32 ``(B, C)``). The last batch may be short. The training order and augmentations of epoch
    ``e`` depend only on the parent's seed and ``e``; ``epoch`` counts the epochs
    started (set it to resume).

    With the parent's pixel cache, an epoch first checks which items are cached
    (one ``stat`` of each file and one ``utime`` of each entry), decodes and
    stores the missing ones in a pre-pass over the workers (with a progress
    bar), then reads every batch from the cache in the main process: reading
    pixels is so cheap that starting and feeding worker processes would cost
    more. If some items cannot be cached (the cache is full), the epoch runs
    through the workers as without a cache.

    Args:
        dls: The parent `ImageDataLoaders`.
        items: ``(path, label index)`` pairs.
        train: Shuffle, decode at ``presize`` and augment (else: in order, at ``size``).
    """

    def __init__(self, dls: ImageDataLoaders, items: Sequence[tuple[Path, int]], train: bool):
        self.dls = dls
        self.items = list(items)
        self.train = train
        self.epoch = 0
        # The current torch DataLoader lives in a one-element list, emptied by a
        # finalizer when this loader is garbage collected. Why: this loader and
        # its parent reference each other, so they die in a cyclic GC pass, and
        # there multiprocessing closes the workers' queues *before* any __del__
        # runs; the DataLoader then waits 5 s per worker for an exit signal that
        # cannot arrive. The finalizer keeps the DataLoader reachable until it
        # runs first, so workers shut down at once.
        self._slot: list[DataLoader] = []
        self._key: tuple | None = None
        self.cache_hits = self.cache_misses = 0
        self.cache_filled = 0  # files this process decoded into the cache
        weakref.finalize(self, self._slot.clear).atexit = False

    @property
    def bs(self) -> int:
        """Batch size (the parent's)."""
        return self.dls.bs

    @property
    def device(self) -> torch.device:
        """Device batches are delivered to (the parent's)."""
        return self.dls.device

    @property
    def skipped(self) -> dict[str, str]:
        """Unreadable files seen so far (shared with the parent), path → reason."""
        return self.dls.skipped

    def _decode_size(self) -> int:
        return self.dls.presize if self.train else self.dls.size

    @property
    def dataset(self) -> ImageDataset:
        """The dataset for the current settings."""
        return self._loader().dataset

    def _loader(self) -> DataLoader:
        """The torch DataLoader, rebuilt when a setting its workers hold changes."""
        from snugfit.distributed import rank, world_size

        where = (rank(), world_size())  # under torchrun: this rank's shard of each batch
        key = (self._decode_size(), self.dls.crop_pct, self.bs, self.dls.num_workers,
               self.device.type, self.dls.seed, where)  # fmt: skip
        if not self._slot or key != self._key:
            self.close()
            ds = ImageDataset(
                self.items,
                self.train,
                self._decode_size(),
                self.dls.crop_pct,
                self.dls.cache,
                n_classes=self.dls.c if self.dls.multi_label else None,
            )
            workers = self.dls.num_workers
            order = _EpochShuffle(len(ds), self.dls.seed) if self.train else None
            batches = {"batch_size": self.bs, "sampler": order, "drop_last": False}
            if where[1] > 1:
                order = order or SequentialSampler(ds)
                batches = {"batch_sampler": _ShardBatches(order, self.bs, *where)}
            dl = DataLoader(
                ds,
                **batches,
                shuffle=False,
                num_workers=workers,
                collate_fn=collate,
                pin_memory=self.device.type == "cuda",
                persistent_workers=workers > 0,
                worker_init_fn=ignore_sigint,
            )
            self._slot.append(dl)
            self._key = key
        return self._slot[0]

    def close(self) -> None:
        """Shut down the worker processes now (they restart on the next iteration)."""
        self._slot.clear()  # the DataLoader's last reference: its workers exit

    def __len__(self) -> int:
        return math.ceil(len(self.items) / self.bs)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        epoch = self.epoch
        self.epoch += 1
        return self._batches(epoch)

    def one_batch(self) -> tuple[Tensor, Tensor]:
        """One batch, without counting an epoch (so training stays reproducible)."""
        it = self._batches(-1, prepass=False)  # one batch must not decode the whole set
        try:
            return next(it)
        except StopIteration:
            raise SnugfitError("no readable images to make a batch from") from None
        finally:
            it.close()

    def _batches(self, epoch: int, prepass: bool = True) -> Iterator[tuple[Tensor, Tensor]]:
        dls = self.dls
        dl = self._loader()
        if isinstance(dl.batch_sampler.sampler, _EpochShuffle):
            dl.batch_sampler.sampler.epoch = epoch
        # One stream for the epoch's augmentations. Under torchrun every rank draws
        # each *global* batch's parameters from the same stream and applies its
        # shard's rows: the ranks together augment exactly as one process would.
        gen = torch.Generator().manual_seed(_mix_seed(dls.seed, epoch, 1))
        shards = dl.batch_sampler if isinstance(dl.batch_sampler, _ShardBatches) else None
        device, size, mean, std = self.device, dls.size, dls.mean, dls.std
        augment = self.train and dls.augment
        settings = {"min_scale": dls.min_scale, "max_rotate": dls.max_rotate, "flip": dls.flip,
                    "max_lighting": dls.max_lighting}  # fmt: skip
        keys = self._cached_keys(dl.dataset, prepass)
        source = dl if keys is None else self._read_cached(dl, keys)
        for b, (x, y, bad) in enumerate(source):
            for path, reason in bad:
                dls._skip(path, reason)
            draw = shards.draw(b, 0 if x is None else len(x)) if shards is not None else None
            if x is None:
                if shards is not None:
                    if augment:  # keep this rank's stream in step with the others
                        augment_params(draw[0], generator=gen, **settings)
                    yield self._empty_batch()  # every rank takes every step together
                continue
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            if augment:
                x = batch_augment(x, size, generator=gen, mean=mean, std=std, draw=draw, **settings)
            else:
                x = center_batch(x, size, mean, std)
            yield x, y

    def _empty_batch(self) -> tuple[Tensor, Tensor]:
        """No images: a rank's empty shard (or one whose images were all unreadable)."""
        size, device = self.dls.size, self.device
        x = torch.empty((0, 3, size, size), device=device)
        if getattr(self.dls, "multi_label", False):
            return x, torch.empty((0, self.dls.c), device=device)
        return x, torch.empty(0, dtype=torch.long, device=device)

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
        present = [k is not None and cache.touch(k) for k in keys]
        skipped = self.dls.skipped
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
                present[i] = i in stored or cache.touch(keys[i])
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
        cache = ds.cache
        entry = 3 * ds.size * ds.size + 128  # pixels + .npy header
        # Entries of other datasets or sizes make way for the missing ones; the
        # ones this run touched or wrote stay.
        fits = cache.make_room(len(missing) * entry, self.dls._cache_since_ns) // entry
        if fits < len(missing):
            cache.warn_full(
                f"{len(missing) - fits} of {len(ds)} images are not cached and are decoded "
                "every epoch"
            )
        missing = missing[:fits]
        if not missing:
            return set()
        self.cache_filled += len(missing)
        workers = min(self.dls.num_workers, len(missing))
        loader = DataLoader(
            _Fill(ds, [(i, keys[i]) for i in missing]),
            batch_size=min(self.bs, 16),  # small chunks: even load and a smooth bar
            num_workers=workers,
            collate_fn=_as_list,
            worker_init_fn=ignore_sigint,
        )
        stored: set[int] = set()
        start = time.perf_counter()
        with progress(self.dls.console, len(missing), "decoding into the cache") as advance:
            for results in loader:
                for i, ok, reason in results:
                    if reason is not None:
                        self.dls._skip(ds.path(i), reason)
                    elif ok:
                        stored.add(i)
                advance(len(results))
        if not self.dls.console.is_terminal:  # the bar is transient; a log file gets one line
            seconds = time.perf_counter() - start
            self.dls.console.print(
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
        cache = ds.cache
        pin = self.device.type == "cuda"
        for idx in dl.batch_sampler:
            x = torch.empty((len(idx), 3, ds.size, ds.size), dtype=torch.uint8, pin_memory=pin)
            y, bad = [], []
            for i in idx:
                row = x[len(y)]
                key = keys[i]
                if key is None or not cache.read_into(key, row.numpy()):
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
            yield x[: len(y)], _stack_targets(y), bad


# ---------------------------------------------------------------------------
# ImageDataLoaders
# ---------------------------------------------------------------------------


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a torch device that exists here; None: CUDA when present, else CPU.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    from snugfit.distributed import device_for

    if device is None:
        return device_for(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
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
    return device_for(dev)  # under torchrun, "cuda" is this process's GPU


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise SnugfitError(f"{name}: must be a positive integer, got {value!r}")
    return int(value)


def _auto_presize(size: int) -> int:
    # ~15% larger than the model input, on a multiple of 8: random crops and
    # rotations then resample from real detail (not upsampled pixels) while
    # decoding and copying stay cheap; and the one bilinear resample on the
    # device shrinks by only ~1.15x, too little to alias.
    return max(size, round(size * 1.15 / 8) * 8)


class ImageDataLoaders:
    """Training and validation loaders for image classification.

    Build one with `from_folder`, `from_name_re`, `from_csv`, `from_lists` or
    `from_path_func`. Files whose header is unreadable are left out (and
    reported) at construction; files that fail to decode later are skipped when
    met. Both end up in ``skipped``.

    Multi-label data (``multi_label=True``: `from_csv` with ``label_delim``, or
    a label function returning lists) has a set of classes per image, possibly
    empty; its targets are multi-hot float32 ``(B, C)`` tensors and a learner
    trains it with sigmoid outputs and binary cross-entropy.

    Args:
        train_items: ``(path, label index)`` pairs for training (multi-label:
            ``(path, tuple of label indices)``).
        valid_items: The same for validation.
        vocab: Class names, indexed by label.
        path: Where the data came from (for messages).
        bs: Batch size.
        size: Side of the square model input.
        presize: Side the training images are decoded to before augmentation;
            None follows ``size`` (about 15% larger).
        crop_pct: Center-crop fraction of the validation transform.
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
        cache: Keep decoded images in a `snugfit.cache.PixelCache`, so files are
            decoded once, not every epoch (False: decode every epoch, write nothing).
        cache_size: Bound on the cache folder, e.g. ``"20GB"`` or ``"512MiB"``;
            default ``$SNUGFIT_CACHE_SIZE``, else 20 GB.
        cache_root: Cache folder; default ``cache_dir() / "images"``.
        console: Where the cache pre-pass shows its progress (default: stderr);
            give the learner's console to share its display.
        unreadable: Files already known to be unreadable, path → reason (e.g.
            `snugfit.check.CheckReport.unreadable_files`): left out and put in
            ``skipped`` without being opened or reported again.
        multi_label: Items carry tuples of label indices (see above); one class
            is then enough.
    """

    def __init__(
        self,
        train_items: Sequence[tuple[Path, int]],
        valid_items: Sequence[tuple[Path, int]],
        vocab: Sequence[str],
        *,
        path: str | os.PathLike | None = None,
        bs: int = 32,
        size: int = 224,
        presize: int | None = None,
        crop_pct: float = 0.875,
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
    ):
        self.path = Path(path) if path is not None else None
        self.multi_label = bool(multi_label)
        self.bs = _check_positive_int("bs", bs)
        self.size = _check_positive_int("size", size)
        self.presize = presize
        if not 0 < crop_pct <= 1:
            raise SnugfitError(f"crop_pct: must be in (0, 1], got {crop_pct!r}")
        if not 0 < min_scale <= 1:
            raise SnugfitError(f"min_scale: must be in (0, 1], got {min_scale!r}")
        if not 0 <= max_lighting < 1:
            raise SnugfitError(f"max_lighting: must be in [0, 1), got {max_lighting!r}")
        if not 0 <= max_rotate <= 180:
            raise SnugfitError(f"max_rotate: must be degrees in [0, 180], got {max_rotate!r}")
        if presize is not None and _check_positive_int("presize", presize) < self.size:
            raise SnugfitError(f"presize: must be at least size ({self.size}), got {presize}")
        self.crop_pct = float(crop_pct)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise SnugfitError(f"seed: must be an integer, got {seed!r}")
        self.seed = int(seed)
        if num_workers is None:
            num_workers = min(4, os.cpu_count() or 1)
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise SnugfitError(f"num_workers: must be an integer >= 0, got {num_workers!r}")
        self.num_workers = num_workers
        self.device = resolve_device(device)
        self.min_scale, self.max_rotate, self.flip = float(min_scale), float(max_rotate), flip
        self.max_lighting, self.augment = float(max_lighting), augment
        self.mean, self.std = tuple(mean), tuple(std)
        self.vocab = list(vocab)
        self.skipped: dict[str, str] = dict(unreadable or {})
        # Resolved even when off, so a bad cache_size is reported either way.
        max_bytes = cache_size_bytes(cache_size)
        self.cache = PixelCache(cache_root, max_bytes) if cache else None
        # Entries used since then belong to this run: making room never deletes
        # them. A second early, as file times come from a coarser kernel clock.
        self._cache_since_ns = time.time_ns() - 10**9
        self.console = console or Console(stderr=True)

        where = self.path if self.path is not None else "data"
        if self.multi_label:
            if not self.vocab:
                raise SnugfitError(f"{where}: no labels found (every image has an empty label)")
            train_items = self._label_sets(train_items)
            valid_items = self._label_sets(valid_items)
        elif len(self.vocab) < 2:
            only = f" ('{self.vocab[0]}')" if self.vocab else ""
            raise SnugfitError(f"{where}: found only one class{only}; need at least two")
        train_items = self._drop_unreadable(train_items)
        valid_items = self._drop_unreadable(valid_items)
        if not train_items:
            raise SnugfitError(f"{where}: the training set is empty (no readable images)")
        if not valid_items:
            raise SnugfitError(f"{where}: the validation set is empty (no readable images)")
        if not self.multi_label:
            seen = {int(label) for _, label in train_items}
            untrained = [c for i, c in enumerate(self.vocab) if i not in seen]
            if untrained:
                logger.warning(
                    f"{where}: class(es) {', '.join(map(repr, untrained))} have no readable "
                    "training image: the model keeps an output for them that never learns"
                )
        self.train_items, self.valid_items = train_items, valid_items
        self.train = DeviceLoader(self, train_items, train=True)
        self.valid = DeviceLoader(self, valid_items, train=False)

    # -- settings -----------------------------------------------------------

    @property
    def c(self) -> int:
        """Number of classes."""
        return len(self.vocab)

    @property
    def presize(self) -> int:
        """Side training images are decoded to (automatic unless set)."""
        return self._presize if self._presize is not None else _auto_presize(self.size)

    @presize.setter
    def presize(self, value: int | None) -> None:
        self._presize = None if value is None else _check_positive_int("presize", value)

    def set_size(self, size: int) -> None:
        """Change the model input size; an automatic ``presize`` follows it."""
        self.size = _check_positive_int("size", size)

    # -- skipped files ------------------------------------------------------

    def _skip(self, path: str | os.PathLike, reason: str) -> None:
        """Record an unreadable file and warn about it, once per file."""
        path = str(path)
        if path not in self.skipped:
            self.skipped[path] = reason
            logger.warning("skipping unreadable image %s: %s", path, reason)

    def _label_sets(self, items: Sequence[tuple[Any, Any]]) -> list[tuple[Path, tuple]]:
        """Multi-label items with their labels as sorted tuples of valid class indices."""
        out = []
        for p, lab in items:
            if isinstance(lab, (str, bytes)) or not isinstance(lab, (Sequence, set, frozenset)):
                raise SnugfitError(
                    f"{p}: multi_label items need a list of class indices, got {lab!r}"
                )
            lab = tuple(sorted({int(c) for c in lab}))
            if lab and not 0 <= lab[0] <= lab[-1] < self.c:
                raise SnugfitError(f"{p}: class index out of range [0, {self.c}) in {lab}")
            out.append((Path(p), lab))
        return out

    def _drop_unreadable(self, items: Sequence[tuple[Path, Any]]) -> list[tuple[Path, Any]]:
        """Items whose header parses; report the others (headers read in threads).

        Files already in ``skipped`` are left out without being opened.
        """
        keep = (lambda lab: lab) if self.multi_label else int
        items = [(Path(p), keep(lab)) for p, lab in items if str(p) not in self.skipped]
        if not items:
            return items
        # Opening a header is mostly waiting on the file system: threads overlap it.
        with ThreadPoolExecutor(max_workers=min(32, 4 * (os.cpu_count() or 1))) as pool:
            problems = list(pool.map(header_problem, [p for p, _ in items], chunksize=64))
        kept = []
        for item, problem in zip(items, problems, strict=True):
            if problem is None:
                kept.append(item)
            else:
                self._skip(item[0], problem)
        return kept

    # -- constructors -------------------------------------------------------

    @classmethod
    def from_folder(
        cls,
        path: str | os.PathLike,
        train: str = "train",
        valid: str | None = None,
        valid_pct: float | None = None,
        seed: int = 42,
        bs: int = 32,
        size: int = 224,
        presize: int | None = None,
        num_workers: int | None = None,
        device: str | torch.device | None = None,
        **kw: Any,
    ) -> ImageDataLoaders:
        """Loaders from class folders, labelled by folder name.

        Layouts, in order of preference:

        * ``path/train/<class>/*`` with ``path/<valid>/<class>/*`` (ImageNet style;
          ``valid=None`` looks for ``val``, then ``valid``);
        * ``path/train/<class>/*`` alone: split randomly (stratified);
        * ``path/<class>/*`` (no ``train`` folder): split randomly.

        Giving ``valid_pct`` forces a random split of the training images.

        Args:
            path: Dataset folder.
            train: Name of the training folder.
            valid: Name of the validation folder (None: ``val`` or ``valid``).
            valid_pct: Validation fraction for a random split (default 0.2 when
                there is no validation folder).
            seed: Seed for the split, shuffling and augmentation.
            bs: Batch size.
            size: Model input size.
            presize: Training decode size (None: automatic).
            num_workers: Decoding processes.
            device: Output device.
            **kw: Further `ImageDataLoaders` settings (augmentation, crop_pct, ...).

        Raises:
            SnugfitError: Missing folder, no images, a single class, bad arguments.
        """
        path = Path(path)
        found = folder_items(path, train, valid, valid_pct, seed)
        return cls(
            found.train,
            found.valid,
            found.vocab,
            path=path,
            seed=seed,
            bs=bs,
            size=size,
            presize=presize,
            num_workers=num_workers,
            device=device,
            **kw,
        )

    @classmethod
    def from_name_re(
        cls,
        path: str | os.PathLike | Sequence[str | os.PathLike],
        pat: str | re.Pattern,
        valid_pct: float = 0.2,
        seed: int = 42,
        **kw: Any,
    ) -> ImageDataLoaders:
        """Loaders labelled by a regular expression on file names.

        The label is the first group of ``pat`` found (``re.search``) in each file's
        name, e.g. ``r'^(.*)_\\d+\\.jpg$'`` for ``great_pyrenees_12.jpg``.

        Args:
            path: A folder (searched recursively) or a list of image files.
            pat: Pattern with at least one group.
            valid_pct: Validation fraction for the stratified random split.
            seed: Seed for the split, shuffling and augmentation.
            **kw: Further `ImageDataLoaders` settings (bs, size, ...).

        Raises:
            SnugfitError: Missing folder, no images, a name that does not match.
        """
        root, train_items, valid_items, vocab = name_re_items(path, pat, valid_pct, seed)
        return cls(train_items, valid_items, vocab, path=root, seed=seed, **kw)

    @classmethod
    def from_csv(
        cls,
        path: str | os.PathLike,
        csv_fname: str = "labels.csv",
        folder: str | None = None,
        fn_col: int | str = 0,
        label_col: int | str = 1,
        valid_col: int | str | None = None,
        valid_pct: float = 0.2,
        header: bool = True,
        seed: int = 42,
        label_delim: str | None = None,
        **kw: Any,
    ) -> ImageDataLoaders:
        """Loaders from a CSV file of ``(file, label)`` rows.

        With ``label_delim`` (fastai's name) the data is multi-label: each label
        cell lists any number of classes, e.g. ``"cat dog"`` with ``" "`` (a
        whitespace delimiter splits on any run of whitespace; surrounding
        whitespace and repeats are ignored). An empty cell means "none of the
        classes" (an all-zero target). The validation split is then random, not
        stratified (`split_random`). Without ``label_delim`` each cell is one
        class name, as before.

        Args:
            path: Dataset folder.
            csv_fname: CSV file, relative to ``path``.
            folder: Folder of the images, relative to ``path`` (None: ``path``).
            fn_col: Column of file names (index, or name when ``header``).
            label_col: Column of labels (index, or name when ``header``).
            valid_col: Optional column of booleans (1/0, true/false, yes/no)
                marking validation rows; replaces the random split.
            valid_pct: Validation fraction for the stratified random split.
            header: Whether the first row holds column names.
            seed: Seed for the split, shuffling and augmentation.
            label_delim: Separator of the classes in a label cell (multi-label);
                None: single-label.
            **kw: Further `ImageDataLoaders` settings (bs, size, ...). Files
                listed but missing that are in ``unreadable`` (as
                `snugfit.check.check_csv` reports them) are skipped.

        Raises:
            SnugfitError: Missing folder or CSV, bad columns or values, files
                listed but missing (and not in ``unreadable``).
        """
        path = Path(path)
        found = csv_items(
            path,
            csv_fname,
            folder,
            fn_col,
            label_col,
            valid_col,
            valid_pct,
            header,
            seed,
            label_delim,
        )
        known = kw.get("unreadable") or {}
        missing = [f for f, _ in found.missing if str(f) not in known]
        if missing:
            n_files = len(found.train) + len(found.valid)
            raise SnugfitError(
                f"{missing[0]}: listed in {found.csv_path} but not found "
                f"({len(missing)} of {n_files} files missing)"
            )
        multi = found.multi_label
        return cls(*found[:3], path=path, seed=seed, multi_label=multi, **kw)  # train, valid, vocab

    @classmethod
    def from_lists(
        cls,
        path: str | os.PathLike,
        fnames: Sequence[str | os.PathLike],
        labels: Sequence[Any],
        valid_pct: float = 0.2,
        seed: int = 42,
        **kw: Any,
    ) -> ImageDataLoaders:
        """Loaders from a list of files and their labels (fastai's ``from_lists``).

        Each label is a class name (single-label), or a list (tuple, set) of
        class names, possibly empty (multi-label; then every label must be one).
        Names are turned into strings with ``str``.

        Args:
            path: Dataset folder; relative ``fnames`` are under it.
            fnames: Image files.
            labels: One label per file.
            valid_pct: Validation fraction of the random split (stratified by
                class for single-label data).
            seed: Seed for the split, shuffling and augmentation.
            **kw: Further `ImageDataLoaders` settings (bs, size, ...).

        Raises:
            SnugfitError: No files, a count mismatch, mixed label kinds, a single
                class (single-label).
        """
        root = Path(path)
        found = list_items(root, fnames, labels, valid_pct, seed)
        train_items, valid_items, vocab, multi, _ = found
        return cls(train_items, valid_items, vocab, path=root, seed=seed, multi_label=multi, **kw)

    @classmethod
    def from_path_func(
        cls,
        path: str | os.PathLike,
        fnames: Sequence[str | os.PathLike] | None,
        label_func: Callable[[Path], Any],
        valid_pct: float = 0.2,
        seed: int = 42,
        **kw: Any,
    ) -> ImageDataLoaders:
        """Loaders labelled by ``label_func(file path)`` (fastai's ``from_path_func``).

        ``label_func`` returns a class name, or a list of class names for
        multi-label data (see `from_lists`).

        Args:
            path: Dataset folder; relative ``fnames`` are under it.
            fnames: Image files; None: every image under ``path`` (`get_image_files`).
            label_func: File path → label.
            valid_pct: Validation fraction of the random split.
            seed: Seed for the split, shuffling and augmentation.
            **kw: Further `ImageDataLoaders` settings (bs, size, ...).
        """
        root = Path(path)
        if fnames is None:
            fnames = image_files_in(root)
        files = [root / f for f in fnames]
        labels = [label_func(f) for f in files]
        return cls.from_lists(root, files, labels, valid_pct=valid_pct, seed=seed, **kw)

    # -- use ----------------------------------------------------------------

    def one_batch(self) -> tuple[Tensor, Tensor]:
        """One augmented training batch ``(x, y)`` on ``device``."""
        return self.train.one_batch()

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
        from matplotlib.figure import Figure  # Figure alone needs no display/pyplot

        loader = {"train": self.train, "valid": self.valid}.get(split)
        if loader is None:
            raise SnugfitError(f"split: must be 'train' or 'valid', got {split!r}")
        n = _check_positive_int("n", n)
        x, y = loader.one_batch()
        x = denormalize(x[:n].float().cpu(), self.mean, self.std).clamp(0, 1)
        y = y[:n].cpu().tolist()
        cols = math.ceil(math.sqrt(len(y)))
        rows = math.ceil(len(y) / cols)
        fig = Figure(figsize=(2 * cols, 2.2 * rows))
        for i, (img, lab) in enumerate(zip(x, y, strict=True)):
            ax = fig.add_subplot(rows, cols, i + 1)
            ax.imshow(img.permute(1, 2, 0).numpy())
            ax.set_title(self._title(lab), fontsize=9)
            ax.axis("off")
        fig.tight_layout()
        out = Path(path)
        fig.savefig(out, format="png", dpi=80)
        return out

    def _title(self, target: int | list[float]) -> str:
        if not self.multi_label:
            return self.vocab[target]
        names = [self.vocab[i] for i, on in enumerate(target) if on]
        return ";".join(names) or "(none)"

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

    def __repr__(self) -> str:
        return (
            f"ImageDataLoaders({len(self.train_items)} train, {len(self.valid_items)} valid, "
            f"{self.c} classes{' (multi-label)' if self.multi_label else ''}, bs={self.bs}, size={self.size}, presize={self.presize}, "
            f"device={self.device}, skipped={len(self.skipped)})"
        )
