"""Finding a dataset's items and splitting them into training and validation.

An item is ``(image file, label)``. This module finds the image files (by
extension), reads labels from class folders, file names or lists (a CSV's:
`snugfit.data.csv_items`), turns class names into indices, and splits the items
(stratified by class, or plainly random for multi-label data). Files are not
opened here: unreadable ones are among the items, and
`snugfit.data.ImageDataLoaders` leaves them out.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from snugfit.data.layout_hints import check_classes
from snugfit.data.name_labels import compile_label_re, label_by_name, suggest_label_re
from snugfit.data.walk import (
    IMAGE_EXTENSIONS,
    SkippedLink,
    by_extension,
    is_image,
    is_run_folder,
    leads_back,
    loop_link,
    run_folder,
    walk_images,
    warn_not_images,
    warn_skipped,
)
from snugfit.errors import SnugfitError

_EXTENSIONS_HINT = ", ".join(sorted(IMAGE_EXTENSIONS))


def get_image_files(path: str | os.PathLike) -> list[Path]:
    """All image files under ``path``, recursively, sorted; matched by extension.

    Links to folders are followed, each real folder read once; a link that leads
    back to a folder holding it (or to one already read) is not followed, and is
    logged once (`snugfit.data.walk`). Hidden files and folders
    (``.ipynb_checkpoints``, ``._x.jpg`` from macOS) are not images of the dataset
    and are left out; other files whose extension is no image format are counted
    in one logged line (`warn_not_images`).
    """
    found = walk_images(path)
    warn_skipped(found.skipped)
    warn_not_images(found.others)
    return found.files


def image_files_in(root: Path) -> list[Path]:
    """`get_image_files` of a folder that must exist and hold images.

    Raises:
        SnugfitError: ``root`` is not a folder, or holds no image file.
    """
    if not root.is_dir():
        raise SnugfitError(f"{root}: no such directory")
    files = get_image_files(root)
    if not files:
        raise no_images(root)
    return files


def split_stratified(
    labels: Sequence[Any], valid_pct: float, seed: int = 42
) -> tuple[list[int], list[int]]:
    """Randomly split indices into train and validation, class by class.

    Each class with ``n`` items sends ``round(valid_pct * n)`` of them to the
    validation set (rounding halves up), at least one when ``n >= 2`` and never
    all of them, so every class is seen in both sets when it can be.

    Args:
        labels: One label (any hashable) per item.
        valid_pct: Fraction for validation, in ``(0, 1)``.
        seed: Seed; the same seed and labels give the same split.

    Returns:
        ``(train_idx, valid_idx)``, each sorted.

    Raises:
        SnugfitError: ``valid_pct`` is not in ``(0, 1)``.
    """
    if not 0 < valid_pct < 1:
        raise SnugfitError(f"valid_pct: must be between 0 and 1 (exclusive), got {valid_pct}")
    by_class: dict[Any, list[int]] = {}
    for i, lab in enumerate(labels):
        by_class.setdefault(lab, []).append(i)
    rng = np.random.default_rng(seed)
    train, valid = [], []
    # Visit classes in a fixed order so the split does not depend on item order.
    for lab in sorted(by_class, key=repr):
        idx = by_class[lab]
        n = len(idx)
        n_valid = math.floor(valid_pct * n + 0.5)
        if n >= 2:
            n_valid = min(max(n_valid, 1), n - 1)
        perm = rng.permutation(n)
        valid.extend(idx[j] for j in perm[:n_valid])
        train.extend(idx[j] for j in perm[n_valid:])
    return sorted(train), sorted(valid)


def split_random(n: int, valid_pct: float, seed: int = 42) -> tuple[list[int], list[int]]:
    """Randomly split ``range(n)`` into train and validation (multi-label data).

    Stratifying by label *sets* would leave most items alone in their group (and
    so never in validation): the split is plain random instead, with
    ``round(valid_pct * n)`` items in validation, at least one and never all
    when ``n >= 2``.

    Returns:
        ``(train_idx, valid_idx)``, each sorted; the same for the same seed.

    Raises:
        SnugfitError: ``valid_pct`` is not in ``(0, 1)``.
    """
    if not 0 < valid_pct < 1:
        raise SnugfitError(f"valid_pct: must be between 0 and 1 (exclusive), got {valid_pct}")
    n_valid = math.floor(valid_pct * n + 0.5)
    if n >= 2:
        n_valid = min(max(n_valid, 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return sorted(perm[n_valid:].tolist()), sorted(perm[:n_valid].tolist())


def labelled(files: Sequence[Path], labels: Sequence[str]) -> tuple[list[str], list[int]]:
    vocab = sorted(set(labels))
    index = {c: i for i, c in enumerate(vocab)}
    return vocab, [index[lab] for lab in labels]


def labelled_multi(label_sets: Sequence[Sequence[str]]) -> tuple[list[str], list[tuple[int, ...]]]:
    """Vocabulary and sorted class-index tuples of multi-label items (repeats dropped)."""
    vocab = sorted({lab for labels in label_sets for lab in labels})
    index = {c: i for i, c in enumerate(vocab)}
    return vocab, [tuple(sorted({index[lab] for lab in labels})) for labels in label_sets]


class SplitItems(NamedTuple):
    """A dataset's items split into training and validation, with their classes.

    What the data check found (`snugfit.data.check_report.CheckReport.split`), and
    what `ImageDataLoaders.from_check` builds loaders from.
    """

    train: list[tuple[Path, Any]]  # (file, class index), or (file, tuple of indices)
    valid: list[tuple[Path, Any]]
    vocab: list[str]
    multi_label: bool
    seed: int  # the seed of the split (the loaders' default seed)


def name_re_items(
    path: str | os.PathLike | Sequence[str | os.PathLike],
    pat: str | re.Pattern,
    valid_pct: float,
    seed: int,
) -> tuple[Path | None, list[tuple[Path, int]], list[tuple[Path, int]], list[str]]:
    """``(root, train, valid, vocab)`` of files labelled by a regular expression on their name.

    The arguments are those of `ImageDataLoaders.from_name_re`.

    Raises:
        SnugfitError: Missing folder, no images, a name that does not match.
    """
    regex = compile_label_re(pat)
    if isinstance(path, (str, os.PathLike)):
        root: Path | None = Path(path)
        files = image_files_in(root)
    else:
        files = [Path(f) for f in path]
        root = files[0].parent if files else None
        if not files:
            raise SnugfitError("path: the list of files is empty")
    _, names, unmatched = label_by_name(files, regex)
    if unmatched:  # fastai's RegexLabeller raises too; the command line skips them
        raise SnugfitError(f"{unmatched[0]}: file name does not match pattern '{regex.pattern}'")
    vocab, labels = labelled(files, names)
    if len(vocab) < 2:
        raise SnugfitError(f"{root}: found only one class ('{vocab[0]}'); need at least two")
    train_items, valid_items = split_items(files, labels, valid_pct, seed)
    return root, train_items, valid_items, vocab


def list_items(
    root: Path,
    fnames: Sequence[str | os.PathLike],
    labels: Sequence[Any],
    valid_pct: float,
    seed: int,
) -> SplitItems:
    """The split items of files and their labels (the arguments of `ImageDataLoaders.from_lists`).

    Raises:
        SnugfitError: No files, a count mismatch, mixed label kinds.
    """
    files = [root / f for f in fnames]
    labels = list(labels)
    if not files:
        raise SnugfitError("fnames: the list of files is empty")
    if len(labels) != len(files):
        raise SnugfitError(f"labels: expected {len(files)} (one per file), got {len(labels)}")

    def is_list(lab: Any) -> bool:
        return isinstance(lab, (list, tuple, set, frozenset))

    multi = is_list(labels[0])
    for f, lab in zip(files, labels, strict=True):
        if is_list(lab) != multi:
            kind = "a list of class names" if multi else "one class name"
            raise SnugfitError(f"{f}: label {lab!r} is not {kind} like the first file's")
    if multi:
        vocab, idx = labelled_multi([[str(c) for c in lab] for lab in labels])
    else:
        vocab, idx = labelled(files, [str(lab) for lab in labels])
    train_items, valid_items = split_items(files, idx, valid_pct, seed)
    return SplitItems(train_items, valid_items, vocab, multi, seed)


def split_labels(text: str, delim: str) -> list[str]:
    """``"a  b "`` → ``["a", "b"]``: split on ``delim``, strip each, drop empty parts.

    A whitespace ``delim`` splits on any run of whitespace (tabs too).
    """
    parts = text.split() if delim.isspace() else text.split(delim)
    return [part.strip() for part in parts if part.strip()]


def split_items(
    files: Sequence[Path],
    labels: Sequence[int] | Sequence[tuple[int, ...]],
    valid_pct: float,
    seed: int,
) -> tuple[list[tuple[Path, Any]], list[tuple[Path, Any]]]:
    if labels and isinstance(labels[0], tuple):  # multi-label: label sets do not stratify
        train_idx, valid_idx = split_random(len(labels), valid_pct, seed)
    else:
        train_idx, valid_idx = split_stratified(labels, valid_pct, seed)
    return (
        [(files[i], labels[i]) for i in train_idx],
        [(files[i], labels[i]) for i in valid_idx],
    )


def _class_files(root: Path, links: list[SkippedLink], others: list[Path]) -> dict[str, list[Path]]:
    """Image files under each immediate subfolder of ``root`` (the class), non-empty only;
    the links not followed are added to ``links`` (a class folder linked to ``root`` or
    above it is one), the files that are no images to ``others``."""
    out = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if leads_back(d):
            links.append(loop_link(d))
            continue
        if is_run_folder(d):  # an --out inside the data: not a class
            links.append(run_folder(d))
            continue
        found = walk_images(d)
        links.extend(found.skipped)
        others.extend(found.others)
        if found.files:
            out[d.name] = found.files
    return out


class FolderItems(NamedTuple):
    """What `folder_items` found: the items, and the folders they came from."""

    train: list[tuple[Path, int]]
    valid: list[tuple[Path, int]]
    vocab: list[str]
    train_dir: Path  # the class folders' parent (``path`` itself without a train folder)
    valid_dir: Path | None  # None: the validation set is a random split of train_dir
    valid_pct: float | None  # the fraction of that split (None with a validation folder)
    links: list[SkippedLink]  # links to folders not followed (loops, folders already read)
    others: list[Path]  # files in the class folders that are no images (by extension)
    unread: Sequence[Path] = ()  # folders of class folders beside train/, not read
    # folders of images without class folders beside train/ (Kaggle's test/), not read:
    # (folder, images in it)
    unlabelled: Sequence[tuple[Path, int]] = ()


def folder_items(
    path: Path,
    train: str = "train",
    valid: str | None = None,
    valid_pct: float | None = None,
    seed: int = 42,
) -> FolderItems:
    """The split items of a class-folder dataset (the layouts of `ImageDataLoaders.from_folder`).

    Files are not opened: unreadable ones are among the items. Class folders
    without any image file are left out of ``vocab``. Links to folders are followed,
    each real folder read once (`snugfit.data.walk`); those not followed are in
    ``links``, the files in class folders whose extension is no image format in
    ``others``, folders of class folders beside ``train/`` that no split reads
    (a ``test/``) in ``unread``, and folders of images without class folders there
    (Kaggle's unlabelled ``test/``) in ``unlabelled``, for the caller to report.

    Raises:
        SnugfitError: Missing folder, no images, a single class, folders that name
            splits, a validation class unknown to training, an empty validation folder.
    """
    if not path.is_dir():
        raise SnugfitError(f"{path}: no such directory")
    train_dir = path / train
    if valid is not None:
        valid_dir: Path | None = path / valid
        if not valid_dir.is_dir():
            raise SnugfitError(f"{valid_dir}: no such directory")
    else:
        valid_dir = next((path / v for v in ("val", "valid") if (path / v).is_dir()), None)
    if not train_dir.is_dir():
        if valid_dir is not None:
            raise SnugfitError(f"{train_dir}: no such directory")
        train_dir = path  # path/<class>/* directly

    links: list[SkippedLink] = []
    others: list[Path] = []
    by_class = _class_files(train_dir, links, others)
    if not by_class:
        raise _no_classes(path, train_dir, others)
    check_classes(path, train_dir, sorted(by_class))
    vocab = sorted(by_class)
    index = {c: i for i, c in enumerate(vocab)}
    files = [f for c in vocab for f in by_class[c]]
    labels = [index[c] for c in vocab for _ in by_class[c]]

    if valid_dir is None or valid_pct is not None:
        valid_pct = 0.2 if valid_pct is None else valid_pct
        train_items, valid_items = split_items(files, labels, valid_pct, seed)
        return FolderItems(
            train_items, valid_items, vocab, train_dir, None, valid_pct, links, others,
            *_beside(path, train_dir, None),
        )  # fmt: skip
    train_items = list(zip(files, labels, strict=True))
    valid_items = []
    for c, vfiles in _class_files(valid_dir, links, others).items():
        if c not in index:
            raise SnugfitError(f"{valid_dir / c}: class '{c}' has no images in {train_dir}")
        valid_items.extend((f, index[c]) for f in vfiles)
    if not valid_items:
        raise SnugfitError(f"{valid_dir}: the validation set is empty (no image files)")
    return FolderItems(
        train_items, valid_items, vocab, train_dir, valid_dir, None, links, others,
        *_beside(path, train_dir, valid_dir),
    )  # fmt: skip


def _no_classes(path: Path, train_dir: Path, others: list[Path]) -> SnugfitError:
    """The error for a training folder without class folders: its images loose in it
    (their names perhaps holding the class), or none at all."""
    loose = [f for f in train_dir.iterdir() if f.is_file() and is_image(f)]
    if not loose:
        return no_images(path, others)
    guess = suggest_label_re(loose)
    hint = f"; their names hold the class: --label-re '{guess}' (from_name_re)" if guess else ""
    if train_dir != path and not guess and _holds_images(path, train_dir):
        hint = (f"; if {train_dir.name}/ is a class beside the others, rename it: a folder "
                f"named {train_dir.name}/ is read as the training split")  # fmt: skip
    return SnugfitError(
        f"{train_dir}: images must be in one subfolder per class ({train_dir}/<class>/*.jpg){hint}"
    )


def _holds_images(path: Path, train_dir: Path) -> bool:
    """Whether a folder beside ``train_dir`` holds image files itself (a class folder)."""
    with contextlib.suppress(OSError):
        for d in path.iterdir():
            if d.is_dir() and d != train_dir and any(map(is_image, d.iterdir())):
                return True
    return False


def _beside(
    path: Path, train_dir: Path, valid_dir: Path | None
) -> tuple[list[Path], list[tuple[Path, int]]]:
    """The folders beside ``train_dir`` (none when the classes are ``path``'s own
    folders) that no split reads (`folders_beside`)."""
    if train_dir == path:
        return [], []
    return folders_beside(path, {train_dir, valid_dir})


def folders_beside(path: Path, used: set) -> tuple[list[Path], list[tuple[Path, int]]]:
    """The folders of ``path`` not in ``used`` (hidden folders and run folders aside):
    those holding a folder with an image file in it (a ``test/`` of class folders),
    and those holding image files themselves, with their count (an unlabelled
    ``test/``)."""
    of_classes, unlabelled = [], []
    for d in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if d in used or is_run_folder(d):
            continue
        with contextlib.suppress(OSError):
            entries = list(d.iterdir())
            classes = [c for c in entries if c.is_dir() and not is_run_folder(c)]
            if any(any(map(is_image, c.iterdir())) for c in classes):
                of_classes.append(d)
            elif images := sum(map(is_image, entries)):
                unlabelled.append((d, images))
    return of_classes, unlabelled


def no_images(path: Path, others: list[Path] | None = None) -> SnugfitError:
    """The error for a folder without images; ``others``, the files found instead, are
    counted by extension (a camera's raw ``.cr2`` files, say)."""
    found = f"; found {len(others)} other file(s): {by_extension(others, top=5)}" if others else ""
    return SnugfitError(f"{path}: no image files found (looked for {_EXTENSIONS_HINT}{found})")
