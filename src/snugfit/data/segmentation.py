"""The loaders of a segmentation dataset: `SegmentationDataLoaders`.

The same settings and plumbing as `snugfit.data.loaders.ImageDataLoaders`
(`snugfit.data.loaders_base`): values pushed to the two device loaders, one skip
list, the pixel cache, ``from_check`` from the data check without a second pass.
What differs:

* items are ``(image, mask)`` pairs (`snugfit.data.seg_items` finds them);
* ``size`` is the working resolution: images and masks are decoded at ``size``
  (the largest centred box of its aspect: the whole image when the aspects agree),
  validation sees that whole image, and training sees random ``crop`` windows of it
  (``crop`` default: ``size``), flipped, rotated and zoomed together with their
  masks. There is no presize: training crops are taken at the scale validation
  sees, so a 512x512 crop of a 1400x2100 image is 512x512 pixels of it;
* the task is `snugfit.tasks.Segmentation`; ``vocab`` is the class names (codes).

Batches: training ``x`` float32 ``(B, 3, *crop)``, ``y`` long ``(B, *crop)``;
validation ``(B, 3, *size)`` and ``(B, *size)``; mask values are class indices
and 255 (void).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from torch import Tensor

from snugfit.data.augment import IMAGENET_MEAN, IMAGENET_STD, Augmentation, denormalize
from snugfit.data.check_seg_report import SegmentationCheckReport
from snugfit.data.datasets import SkipList
from snugfit.data.decode import prepare_for_predict
from snugfit.data.grid import save_grid
from snugfit.data.loaders_base import DataLoadersBase, checked_split
from snugfit.data.masks import binary_counts, binary_masks, pair_header_problem, scan_masks
from snugfit.data.preprocessing import Preprocessing, check_positive_int
from snugfit.data.seg_items import (
    Pair,
    SegmentationItems,
    check_codes,
    folder_pairs,
    is_jpeg_mask,
    label_func_pairs,
    numbered_codes,
    pairs_of,
    warn_listing,
)
from snugfit.data.seg_loader import SegmentationDeviceLoader
from snugfit.data.settings import LoaderSettings, resolve_device
from snugfit.errors import SnugfitError
from snugfit.sizes import Size, as_hw, check_size
from snugfit.tasks import VOID, Segmentation

logger = logging.getLogger("snugfit")


class SegmentationDataLoaders(DataLoadersBase):
    """Training and validation loaders for semantic segmentation (see the module docstring).

    Build one with `from_folder`, `from_label_func` or `from_check`. Pairs whose image
    or mask header is unreadable, whose sizes differ, or whose mask is not 8-bit
    single-channel are left out (and reported) at construction; pairs that fail to
    decode later (truncated data, mask values that are not classes) are skipped when
    met. Both end up in ``skipped``, under the image's path.

    Settings are read and set as attributes, as for ``ImageDataLoaders``: ``bs``,
    ``seed``, ``device``, ``num_workers``, ``console``; ``size``, ``crop``, ``mean``,
    ``std`` (``preprocessing``); ``augment``, ``min_scale``, ``max_rotate``, ``flip``,
    ``max_lighting`` (``augmentation``).

    Args:
        train_items: ``(image file, mask file)`` pairs for training.
        valid_items: The same for validation.
        vocab: Class names: class ``i`` is mask value ``i`` (at most 255 classes).
        path: Where the data came from (for messages).
        bs: Batch size.
        size: The working resolution, a side or ``(height, width)``: what validation
            and prediction see whole, and what training crops are cut from.
        crop: The training window, a side or ``(height, width)`` at most ``size``,
            at a random place; None: ``size`` (whole images).
        seed: Seed for shuffling and augmentation.
        num_workers: Decoding processes; default ``min(4, cpu count)``.
        device: Device batches are delivered to; default CUDA when available.
        min_scale: Smallest area of the zoomed window, as a fraction of ``crop``
            (1: no zoom, the default).
        max_rotate: Largest random rotation, in degrees (0: none, the default).
            Zoom and rotation resample the image and its mask; on the generated
            scenes of ``bench/segment.py`` (fine textures, one-pixel void edges)
            each cost Dice (0.992 without either, 0.987 with zoom to 0.75, 0.988
            with rotations of 10 degrees), unlike classification's photos.
        flip: Random horizontal flips.
        max_lighting: Largest relative brightness/contrast change (images only).
        augment: Augment training batches (False: the central ``crop`` window).
        mean: Normalisation mean (the learner sets the model's).
        std: Normalisation standard deviation.
        cache: Keep decoded images and masks in the pixel cache (False: decode every epoch).
        cache_size: Bound on the cache folder (see ``ImageDataLoaders``).
        cache_root: Cache folder; default ``cache_dir() / "images"``.
        console: Where the cache pre-pass shows its progress (default: stderr).
        unreadable: Images already known to be unusable, path → reason (e.g. the data
            check's): left out unopened, not reported again.
        left_out: Images to leave out and report now, path → reason (e.g. images
            without a mask, found when listing the folder).
        checked: A data check decoded every pair: no header is opened here.
        loss: The task's loss: ``"ce"`` (cross-entropy) or ``"dice_ce"``, both ignoring void.
        binary: Read 255 in the masks as class 1, not void: binary masks that mark the
            object with 255 (`snugfit.data.masks.binary_masks`; ``from_folder`` and
            ``from_check`` find out by themselves).
        colours: Colour masks: class i is painted ``colours[i]``, an ``(r, g, b)``
            (``from_folder`` reads them from a class_dict.csv).
    """

    def __init__(
        self,
        train_items: Sequence[Pair],
        valid_items: Sequence[Pair],
        vocab: Sequence[str],
        *,
        path: str | os.PathLike | None = None,
        bs: int = 8,
        size: Size = 224,
        crop: Size | None = None,
        seed: int = 42,
        num_workers: int | None = None,
        device: str | torch.device | None = None,
        min_scale: float = 1.0,
        max_rotate: float = 0.0,
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
        left_out: Mapping[str, str] | None = None,
        checked: bool = False,
        loss: str = "ce",
        binary: bool = False,
        colours: Sequence[Sequence[int]] | None = None,
    ):
        size = check_size("size", size)
        preprocessing = Preprocessing(
            size, None, mean, std, 1.0, crop=size if crop is None else crop
        )
        self._setup(
            path=path,
            task=Segmentation(loss=loss, binary=binary, colours=colours),
            settings=LoaderSettings(
                bs=check_positive_int("bs", bs),
                preprocessing=preprocessing,
                augmentation=Augmentation(augment, min_scale, max_rotate, flip, max_lighting),
                seed=seed,
                device=resolve_device(device),
                num_workers=num_workers,
                console=console or Console(stderr=True),
            ),
            vocab=check_codes(vocab, "vocab"),
            unreadable=unreadable,
            cache=cache,
            cache_size=cache_size,
            cache_root=cache_root,
        )
        where = self.path if self.path is not None else "data"
        if self.c < 2:
            raise SnugfitError(
                f"{where}: found only one class ({self.vocab[0]!r}); need at least two"
            )
        if binary and self.c != 2:
            raise SnugfitError(f"binary: binary masks have two classes, got {self.c}")
        if colours is not None and len(colours) != self.c:
            raise SnugfitError(f"colours: one a class, got {len(colours)} for {self.c} classes")
        for image, reason in (left_out or {}).items():
            self.skips.skip(image, reason)
        self.train_items = usable_pairs(train_items, self.skips, checked)
        self.valid_items = usable_pairs(valid_items, self.skips, checked)
        if not self.train_items:
            raise SnugfitError(f"{where}: the training set is empty (no readable image/mask pair)")
        if not self.valid_items:
            raise SnugfitError(
                f"{where}: the validation set is empty (no readable image/mask pair)"
            )
        self.train, self.valid = self._device_loaders(self.settings)

    def _device_loaders(
        self, settings: LoaderSettings
    ) -> tuple[SegmentationDeviceLoader, SegmentationDeviceLoader]:
        shared = {
            "task": self.task,
            "n_classes": self.c,
            "skips": self.skips,
            "cache": self.cache,
            "cache_since_ns": self.cache_since_ns,
        }
        return (
            SegmentationDeviceLoader(self.train_items, True, settings, **shared),
            SegmentationDeviceLoader(self.valid_items, False, settings, **shared),
        )

    # -- constructors ---------------------------------------------------------

    @classmethod
    def from_folder(
        cls,
        path: str | os.PathLike,
        *,
        size: Size = 224,
        crop: Size | None = None,
        bs: int = 8,
        valid_pct: float | None = None,
        seed: int = 42,
        loss: str = "ce",
        images: str | None = None,
        masks: str | None = None,
        **kw: Any,
    ) -> SegmentationDataLoaders:
        """Loaders of ``path/images/<name>.<ext>`` and ``path/masks/<name>.png`` (or
        .tif, .bmp, .gif; a .jpg is read as a binary mask), of PASCAL VOC's
        ``JPEGImages/`` and ``SegmentationClass/``, of a layout found from the files
        (`snugfit.data.seg_layouts`), or of the folders ``images`` and ``masks``
        named under ``path`` (``masks="annotations/trimaps"``).

        Classes: ``path/codes.txt`` (line i names class i; or class_dict.csv,
        labelmap.txt with colours), else ``class_0`` ... up to the largest value in
        the masks (every mask is read for it). Validation: the images
        ``path/valid.txt`` (VOC: ``ImageSets/Segmentation/val.txt``) names; with
        ``valid_pct``, or without that list, a random split seeded by ``seed``
        (``valid_pct`` default 0.2).
        Images without a mask are left out and reported (``skipped``), and so are
        masks without an image (logged).

        Args:
            path: The dataset folder.
            size, crop, bs, seed, loss: As for the class.
            valid_pct: Validation fraction of a random split (see above).
            images, masks: The folders of the images (default ``images``) and of the
                masks, relative to ``path``, for a layout that is not found alone.
            **kw: Further settings of the class.

        Raises:
            SnugfitError: Missing folders, no pair, a bad codes.txt or valid.txt, fewer
                than two classes, an empty training or validation set.
        """
        found = folder_pairs(path, valid_pct, seed, images, masks)
        return cls._from_items(found, path, size=size, crop=crop, bs=bs, loss=loss, **kw)

    @classmethod
    def from_label_func(
        cls,
        path: str | os.PathLike,
        fnames: Sequence[str | os.PathLike],
        label_func: Callable[[Path], str | os.PathLike],
        codes: Sequence[str] | None = None,
        valid_pct: float = 0.2,
        seed: int = 42,
        **kw: Any,
    ) -> SegmentationDataLoaders:
        """Loaders of images and their masks, ``label_func(image path) -> mask path``
        (fastai's ``SegmentationDataLoaders.from_label_func``).

        Args:
            path: The dataset folder; relative ``fnames`` are under it.
            fnames: The image files.
            label_func: Image file → its mask file.
            codes: Class names (class ``i`` is mask value ``i``); None: ``class_0`` ...
                up to the largest value in the masks.
            valid_pct: Validation fraction of the seeded random split.
            seed: Seed for the split, shuffling and augmentation.
            **kw: Further settings of the class (size, crop, bs, loss, ...).
        """
        found = label_func_pairs(path, fnames, label_func, codes, valid_pct, seed)
        return cls._from_items(found, path, **kw)

    @classmethod
    def _from_items(
        cls, found: SegmentationItems, path: str | os.PathLike, **kw: Any
    ) -> SegmentationDataLoaders:
        left_out = {str(image): reason for image, reason in found.no_mask}
        warn_listing(found, path)
        jpeg = 0 if found.colours else sum(is_jpeg_mask(m) for _, m in pairs_of(found))
        if jpeg:
            logger.info("%s: %d JPEG mask(s) read as binary masks (grey >= 128)", path, jpeg)
        kw.setdefault("colours", found.colours)
        vocab = found.vocab
        two = vocab is not None and len(vocab) == 2 and found.colours is None
        if vocab is None or (two and "binary" not in kw):
            known = {**(kw.get("unreadable") or {}), **left_out}
            numbered, binary, bad = _numbered_classes(pairs_of(found), known, path, vocab)
            vocab = vocab or numbered
            kw.setdefault("binary", binary)
            left_out.update(bad)
        return cls(
            found.train,
            found.valid,
            vocab,
            path=path,
            seed=found.seed,
            left_out=left_out,
            **kw,
        )

    @classmethod
    def from_check(cls, report: SegmentationCheckReport, **kw: Any) -> SegmentationDataLoaders:
        """Loaders of the pairs a data check split (`snugfit.data.check_seg.check_segmentation`),
        with its classes, no second split and no second pass over the files: the pairs
        it found unusable are skipped unopened, and no other file is opened before it is
        decoded.

        Args:
            report: The check's report (with its ``split``).
            **kw: Further settings (size, crop, bs, ...); ``seed`` defaults to the check's.

        Raises:
            SnugfitError: The report has no split items (one read back from ``check.json``).
        """
        split, unreadable = checked_split(report, kw)
        return cls(
            split.train,
            split.valid,
            split.vocab,
            path=report.root,
            unreadable=unreadable,
            checked=True,
            binary=report.binary,
            colours=report.colours,
            **kw,
        )

    # -- settings -------------------------------------------------------------

    @property
    def binary(self) -> bool:
        """Whether the masks are binary masks read with 255 as class 1 (the task's)."""
        return self.task.binary

    @property
    def crop(self) -> Size:
        """The training window (``size`` when training on whole images)."""
        return self.preprocessing.train_input

    @crop.setter
    def crop(self, value: Size | None) -> None:
        p = self.preprocessing
        self.configure(preprocessing=p.replace(crop=p.size if value is None else value))

    def set_size(self, size: Size, crop: Size | None = None) -> None:
        """Change the working resolution; the training ``crop`` is given, or keeps its
        fraction of the size (each side rounded; whole images stay whole)."""
        p = self.preprocessing
        size = check_size("size", size)
        if crop is None:
            crop = tuple(
                min(new, max(1, round(c * new / old)))
                for c, old, new in zip(as_hw(p.train_input), p.hw, as_hw(size), strict=True)
            )
        self.configure(preprocessing=p.replace(size=size, crop=crop))

    # -- use ------------------------------------------------------------------

    def test_tensor(
        self, images: str | os.PathLike | Image.Image | Sequence[str | os.PathLike | Image.Image]
    ) -> Tensor:
        """Files or PIL images as a normalised CPU batch: the whole image at ``size``."""
        return prepare_for_predict(images, self.size, 1.0, self.mean, self.std)

    def show_batch(
        self,
        path: str | os.PathLike = "batch.png",
        n: int = 8,
        split: str = "train",
        alpha: float = 0.45,
    ) -> Path:
        """Save a grid of ``n`` images of a batch with their masks overlaid (a colour per
        class, void left bare), titled with their largest classes.

        Args:
            path: PNG file to write.
            n: Number of images (at most one batch).
            split: ``"train"`` (augmented crops) or ``"valid"`` (whole images).
            alpha: Opacity of the class colours.

        Returns:
            The path written.
        """
        loader = self.loader(split)
        n = check_positive_int("n", n)
        x, y = loader.one_batch()
        x = denormalize(x[:n].float().cpu(), self.mean, self.std).clamp(0, 1)
        y = y[:n].cpu()
        titles = [self.task.title(mask, self.vocab) for mask in y]
        return save_grid(overlay(x, y, class_colours(self.c), alpha), titles, path, fontsize=8)

    def __repr__(self) -> str:
        return (
            f"SegmentationDataLoaders({len(self.train_items)} train, {len(self.valid_items)} "
            f"valid, {self.c} classes, bs={self.bs}, size={self.size}, crop={self.crop}, "
            f"device={self.device}, skipped={len(self.skipped)})"
        )


def usable_pairs(items: Sequence[Pair], skips: SkipList, checked: bool) -> list[tuple[Path, Path]]:
    """Pairs not in ``skips`` whose headers look fine (unless ``checked``: a data check
    decoded them); the others are recorded in ``skips`` under the image's path."""
    pairs = [(Path(i), Path(m)) for i, m in items if str(i) not in skips]
    if not pairs or checked:
        return pairs
    # Opening a header is mostly waiting on the file system: threads overlap it.
    with ThreadPoolExecutor(max_workers=min(32, 4 * (os.cpu_count() or 1))) as pool:
        problems = list(pool.map(lambda p: pair_header_problem(*p), pairs, chunksize=64))
    kept = []
    for pair, problem in zip(pairs, problems, strict=True):
        if problem is None:
            kept.append(pair)
        else:
            skips.skip(pair[0], problem)
    return kept


def _numbered_classes(
    pairs: Sequence[Pair], known: Mapping[str, str], where, codes: Sequence[str] | None
) -> tuple[list[str], bool, dict[str, str]]:
    """From every mask's values: ``class_0`` ... up to the largest class value, whether
    they are binary masks marking the object with 255 (given ``codes``, the classes),
    and the images whose mask cannot be read (image → reason)."""
    pairs = [(i, m) for i, m in pairs if str(i) not in known]
    found = scan_masks([m for _, m in pairs])
    seen = np.zeros(256, dtype=np.int64)
    bad = {}
    for (image, mask), counts in zip(pairs, found, strict=True):
        if isinstance(counts, str):
            bad[str(image)] = f"mask {mask}: {counts}"
        else:
            seen += counts
    binary = binary_masks(seen, None if codes is None else len(codes))
    if binary:
        seen = binary_counts(seen)
    values = np.flatnonzero(seen[:VOID])
    if not len(values):
        raise SnugfitError(
            f"{where}: no class values in the masks (every readable mask is void, {VOID}); "
            "nothing to learn"
        )
    return numbered_codes(int(values[-1])), binary, bad


def class_colours(n: int) -> np.ndarray:
    """``(n, 3)`` distinct colours in ``[0, 1]``, one per class (matplotlib's tab20, then
    golden-ratio hues)."""
    from matplotlib import colormaps
    from matplotlib.colors import hsv_to_rgb

    tab = np.array([colormaps["tab20"](i)[:3] for i in range(20)])
    extra = [hsv_to_rgb(((i * 0.618034) % 1, 0.8, 0.9)) for i in range(max(0, n - 20))]
    return np.concatenate([tab, np.array(extra).reshape(-1, 3)])[:n]


def overlay(x01: Tensor, masks: Tensor, colours: np.ndarray, alpha: float) -> np.ndarray:
    """``(B, H, W, 3)`` images in ``[0, 1]`` with each class's pixels tinted by its colour
    (void pixels as they are)."""
    img = x01.permute(0, 2, 3, 1).numpy().copy()
    m = masks.numpy()
    labelled = m != VOID
    tint = colours[np.where(labelled, m, 0)]
    img[labelled] = (1 - alpha) * img[labelled] + alpha * tint[labelled]
    return img
