"""The ways to build `snugfit.data.loaders.ImageDataLoaders` from a dataset.

`LoaderConstructors` is its base class: each constructor finds the items and
their labels (`snugfit.data.items`), splits them, and calls the class with them.
`from_check` builds from what a data check already found (`snugfit.data.check`):
its split, and no second pass over the files.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from snugfit.data.check_report import CheckReport
from snugfit.data.csv_items import csv_items, warn_csv_items
from snugfit.data.items import folder_items, image_files_in, list_items, name_re_items
from snugfit.data.loaders_base import checked_split
from snugfit.data.walk import warn_not_images, warn_skipped
from snugfit.sizes import Size

L = TypeVar("L", bound="LoaderConstructors")
logger = logging.getLogger("snugfit")


class LoaderConstructors:
    """`ImageDataLoaders`' constructors (its base class; see there for the settings)."""

    @classmethod
    def from_folder(
        cls: type[L],
        path: str | os.PathLike,
        train: str = "train",
        valid: str | None = None,
        valid_pct: float | None = None,
        seed: int = 42,
        bs: int = 32,
        size: Size = 224,
        presize: Size | None = None,
        num_workers: int | None = None,
        device: str | torch.device | None = None,
        **kw: Any,
    ) -> L:
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
            size: Model input size: a side or ``(height, width)``.
            presize: Training decode size (None: automatic).
            num_workers: Decoding processes.
            device: Output device.
            **kw: Further `ImageDataLoaders` settings (augmentation, crop_pct, ...).

        Raises:
            SnugfitError: Missing folder, no images, a single class, bad arguments.
        """
        path = Path(path)
        found = folder_items(path, train, valid, valid_pct, seed)
        warn_skipped(found.links)
        warn_not_images(found.others)
        for folder in found.unread:
            logger.warning(f"{folder}: class folders beside {found.train_dir.name}/ that are "
                           f"not read (valid={folder.name!r} validates on them)")  # fmt: skip
        for folder, n in found.unlabelled:
            logger.info(f"{folder}: {n} images without class folders, not read (unlabelled; "
                        f"snugfit predict labels them)")  # fmt: skip
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
        cls: type[L],
        path: str | os.PathLike | Sequence[str | os.PathLike],
        pat: str | re.Pattern,
        valid_pct: float = 0.2,
        seed: int = 42,
        **kw: Any,
    ) -> L:
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
        cls: type[L],
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
        suffix: str = "",
        **kw: Any,
    ) -> L:
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
            suffix: Appended to every file name (fastai's ``suffix``). Without it,
                a name that is no file and has no image extension is read as the one
                image file of that name plus an extension (Kaggle's ``id_code`` for
                ``id_code.png``; logged).
            **kw: Further `ImageDataLoaders` settings (bs, size, ...). Files
                listed but missing that are in ``unreadable`` (as
                `snugfit.data.check.check_csv` reports them) are skipped.

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
            suffix,
        )
        warn_csv_items(found, kw.get("unreadable") or {})
        multi = found.multi_label
        return cls(*found[:3], path=path, seed=seed, multi_label=multi, **kw)  # train, valid, vocab

    @classmethod
    def from_lists(
        cls: type[L],
        path: str | os.PathLike,
        fnames: Sequence[str | os.PathLike],
        labels: Sequence[Any],
        valid_pct: float = 0.2,
        seed: int = 42,
        **kw: Any,
    ) -> L:
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
        cls: type[L],
        path: str | os.PathLike,
        fnames: Sequence[str | os.PathLike] | None,
        label_func: Callable[[Path], Any],
        valid_pct: float = 0.2,
        seed: int = 42,
        **kw: Any,
    ) -> L:
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

    @classmethod
    def from_check(cls: type[L], report: CheckReport, **kw: Any) -> L:
        """Loaders of the items a data check split (`snugfit.data.check.check_folder`,
        `snugfit.data.check.check_csv`), with no second split and no second pass over
        the files.

        The check decoded every file: those it found unreadable or missing are put in
        ``skipped`` unopened, and no other file is opened before it is decoded.

        Args:
            report: The check's report (with its ``split``).
            **kw: Further `ImageDataLoaders` settings (bs, size, ...); ``seed``
                defaults to the check's.

        Raises:
            SnugfitError: The report has no split items (one read back from ``check.json``).
        """
        split, unreadable = checked_split(report, kw)
        return cls(
            split.train,
            split.valid,
            split.vocab,
            path=report.root,
            multi_label=split.multi_label,
            unreadable=unreadable,
            checked=True,
            **kw,
        )
