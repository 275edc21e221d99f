"""Datasets, batching and sampling: the parts of the pipeline torch's DataLoader runs.

* `ImageDataset` decodes ``(path, label)`` items to uint8 squares (through the
  pixel cache when there is one) and gives each its target through the task
  (`snugfit.tasks`); a file that fails to decode becomes an `Unreadable` sentinel.
  `snugfit.data.seg_loader.SegmentationDataset` is its segmentation twin (the mask
  travels in the pixels); `PathList` packs either's paths.
* `collate` stacks a batch, dropping the sentinels; `SkipList` records them, once
  per file, for the whole dataset.
* `EpochShuffle` and `ShardBatches` fix the training order by ``(seed, epoch)``
  and, under torchrun, give each rank its shard of every global batch.
* `make_dataloader` is the one place a torch ``DataLoader`` is built: its workers
  ignore Ctrl-C (`ignore_sigint`) and pin memory for a CUDA device.
"""

from __future__ import annotations

import logging
import math
import os
import signal
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from snugfit import distributed
from snugfit.data.cache import PixelCache
from snugfit.data.decode import decode_train, decode_valid
from snugfit.errors import UnreadableImage
from snugfit.sizes import Size, as_hw
from snugfit.tasks import SingleLabel, Task

logger = logging.getLogger("snugfit")

SINGLE_LABEL = SingleLabel()  # the default task: class-index targets

# ---------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------


class Unreadable(NamedTuple):
    """Sentinel a dataset returns for a file that failed to decode."""

    path: str
    reason: str


class PathList:
    """Paths packed into one numpy byte buffer rather than a list of Python objects:
    forked workers that touch Python objects update their reference counts, copying
    every page they sit on, so a big list slowly duplicates itself in each worker.

    >>> paths = PathList(["a.jpg", Path("b/c.png")])
    >>> len(paths), paths[1]
    (2, 'b/c.png')
    """

    def __init__(self, paths):
        encoded = [os.fsencode(p) for p in paths]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=self._offsets[1:])
        self._bytes = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> str:
        return os.fsdecode(self._bytes[self._offsets[i] : self._offsets[i + 1]].tobytes())


class ImageDataset(Dataset):
    """``(path, label)`` items decoded to uint8 squares.

    Paths are packed (`PathList`), and so are labels.

    Labels are class indices (packed in ``labels``), or tuples of class indices
    (multi-label items; packed the same way, ``labels`` is then None; see
    `label`). An item's training target is the task's (`Task.target`).

    Args:
        items: ``(path, label index)`` pairs, or ``(path, tuple of label indices)``.
        train: Decode with `decode_train` at ``size`` (else `decode_valid`).
        size: Output size, a side or ``(height, width)`` (``presize`` for training).
        crop_pct: Center-crop fraction for validation decoding.
        cache: Where decoded squares are looked up before decoding and stored
            after (None: always decode).
        task: What a label's target is (default: `SingleLabel`, the class index).
        n_classes: The number of classes (the length of a multi-hot target).
    """

    def __init__(
        self,
        items: Sequence[tuple[Path, int]] | Sequence[tuple[Path, tuple[int, ...]]],
        train: bool,
        size: Size,
        crop_pct: float = 0.875,
        cache: PixelCache | None = None,
        task: Task | None = None,
        n_classes: int = 0,
    ):
        self._paths = PathList(p for p, _ in items)
        self._pack_labels([lab for _, lab in items])
        self.task = task or SINGLE_LABEL
        self.n_classes = n_classes
        self.train = train
        self.size = size
        self.crop_pct = crop_pct
        self.cache = cache

    def _pack_labels(self, labels: list) -> None:
        if labels and isinstance(labels[0], tuple):  # label sets: ragged, packed flat
            self.labels = None
            self._label_offsets = np.zeros(len(labels) + 1, dtype=np.int64)
            np.cumsum([len(lab) for lab in labels], out=self._label_offsets[1:])
            self._label_flat = np.array([c for lab in labels for c in lab], dtype=np.int64)
        else:
            self.labels = np.array(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._paths)

    def path(self, i: int) -> str:
        """The file of item ``i``."""
        return self._paths[i]

    def label(self, i: int) -> int | tuple[int, ...]:
        """Item ``i``'s class index, or tuple of class indices (multi-label)."""
        if self.labels is not None:
            return int(self.labels[i])
        return tuple(self._label_flat[self._label_offsets[i] : self._label_offsets[i + 1]].tolist())

    def target(self, i: int) -> int | np.ndarray:
        """Item ``i``'s training target: its class index, or a multi-hot float32 vector."""
        return self.task.target(self.label(i), self.n_classes)

    @property
    def items(self) -> list[tuple[Path, int]] | list[tuple[Path, tuple[int, ...]]]:
        """The items, as ``(Path, label)`` pairs."""
        return [(Path(self.path(i)), self.label(i)) for i in range(len(self))]

    @property
    def shape(self) -> tuple[int, int, int]:
        """One decoded image's shape, ``(3, height, width)``."""
        return (3, *as_hw(self.size))

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

    @property
    def entry_bytes(self) -> int:
        """Disk bytes of one item's cache entry (pixels and the .npy header)."""
        return math.prod(self.shape) + 128

    def is_cached(self, key) -> bool:
        """Whether the entry of ``key`` exists; marks it as just used (`PixelCache.touch`)."""
        return self.cache.touch(key)

    def read_cached(self, key, out: np.ndarray) -> bool:
        """Read the entry of ``key`` into ``out`` (an item's pixels); False on a miss."""
        return self.cache.read_into(key, out)

    def store(self, key, x: Tensor) -> bool:
        """Cache an item's decoded pixels under ``key``; False if the bound stops it."""
        return self.cache.put(key, x.numpy())

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
            cached = self.cache.get(key, self.shape)
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


class SkipList:
    """The files training leaves out, path → reason: one record, shared by a dataset's loaders.

    >>> skips = SkipList({"a.jpg": "not an image"})
    >>> "a.jpg" in skips, len(skips)
    (True, 1)
    """

    def __init__(self, known: Mapping[str, str] | None = None):
        self.files: dict[str, str] = dict(known or {})  # files known unreadable are not warned of

    def skip(self, path: str | os.PathLike, reason: str) -> None:
        """Record a file left out (unreadable, missing, an image without a mask) and warn
        about it, once per file."""
        path = str(path)
        if path not in self.files:
            self.files[path] = reason
            logger.warning("skipping %s: %s", path, reason)  # the reason says what is wrong

    def __contains__(self, path: object) -> bool:
        return str(path) in self.files

    def __len__(self) -> int:
        return len(self.files)


# ---------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------


def collate(
    samples: list[tuple[Tensor, Any] | Unreadable], task: Task | None = SINGLE_LABEL
) -> tuple[Tensor | None, Tensor | None, list[tuple[str, str]]]:
    """Stack decoded samples, dropping `Unreadable` ones.

    ``task`` None: the samples' targets are part of their pixels (segmentation masks,
    `snugfit.data.seg_loader`) and ``y`` is None.

    Returns:
        ``(x, y, bad)``: uint8 images ``(B, C, H, W)``, the targets stacked by
        ``task`` (long ``(B,)``, or multi-hot float32 ``(B, C)``; both None if
        every sample was unreadable) and ``(path, reason)`` pairs.
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
    y = task.stack_targets([s[1] for s in good]) if task is not None else None
    return x, y, bad


def ignore_sigint(_worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: Ctrl-C is the main process's to handle.

    A terminal sends SIGINT to the whole process group; a worker that died of it
    would turn the main process's clean stop (finish the batch, save, resume
    command) into "DataLoader worker exited unexpectedly". The main process shuts
    its workers down itself.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_dataloader(
    dataset: Dataset,
    *,
    batch_size: int = 1,
    sampler: Sampler | None = None,
    batch_sampler: Sampler[list[int]] | None = None,
    num_workers: int = 0,
    device: torch.device | str,
    collate_fn: Callable[[list], Any] = collate,
    persistent: bool = False,
) -> DataLoader:
    """A torch DataLoader over ``dataset``, in order (or ``sampler``'s), the last batch kept.

    Its workers ignore Ctrl-C (`ignore_sigint`); batches are pinned for a CUDA
    ``device``.

    Args:
        dataset: What to load.
        batch_size: Items per batch (unless ``batch_sampler``).
        sampler: The order of the items (None: in order).
        batch_sampler: Yields each batch's indices (replaces ``batch_size`` and ``sampler``).
        num_workers: Worker processes (0: load in this process).
        device: Where the batches go.
        collate_fn: Makes a batch from a list of items.
        persistent: Keep the workers between epochs.
    """
    if batch_sampler is not None:
        batching: dict[str, Any] = {"batch_sampler": batch_sampler}
    else:
        batching = {"batch_size": batch_size, "sampler": sampler, "drop_last": False}
    return DataLoader(
        dataset,
        **batching,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=torch.device(device).type == "cuda",
        persistent_workers=persistent and num_workers > 0,
        worker_init_fn=ignore_sigint,
    )


# ---------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------


def mix_seed(seed: int, epoch: int, stream: int) -> int:
    """A 63-bit seed for (seed, epoch, stream), different for each combination.

    >>> mix_seed(42, 0, 1) != mix_seed(42, 1, 0)
    True
    """
    return (seed * 1_000_003 + epoch * 7_919 + stream) % (2**63)


class EpochShuffle(Sampler[int]):
    """A random permutation fixed by ``(seed, epoch)``, set before each epoch."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, 0))
        return iter(torch.randperm(self.n, generator=g).tolist())


class ShardBatches(Sampler[list[int]]):
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
