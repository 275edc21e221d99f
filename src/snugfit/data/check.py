"""Check a dataset before training: what is in it, and what is wrong with it.

`check_folder` reads a dataset in the layouts `ImageDataLoaders.from_folder`
accepts, `check_csv` one listed in a CSV file as `ImageDataLoaders.from_csv`
reads it (the same rules, the same split); both hand the split items to
`check_items`, which fully decodes every file, in threads: Pillow releases the
GIL while it decodes, and JPEGs are decoded at a reduced scale (``draft``),
which still reads every byte, so truncated files are found. It reports:

* usable images per class and split (multi-label: per label, so an image with
  several labels counts once under each, and per split);
* unreadable files, with the reason training would give
  (`snugfit.data.decode.open_image`);
* CSV rows naming files that do not exist (skipped like unreadable files);
* duplicates, files with the same bytes: across train and validation (a
  leak that inflates validation scores), under two labels (label sets), or
  twice in a class;
* class imbalance: the largest over the smallest class (training images),
  flagged from `IMBALANCE_RATIO`;
* tiny images: a side under a quarter of the training size's shorter side
  (`snugfit.data.check_report.tiny_side`: 56 px at 224), which training enlarges
  more than 4x;
* large images: over Pillow's pixel limit (``Image.MAX_IMAGE_PIXELS``), which it
  decodes with a DecompressionBombWarning (over twice the limit it refuses them:
  unreadable);
* class folders with no image file, or none that can be read;
* folders not followed: a loop (a link to a folder that holds it), a second way
  to a folder already read, or a run folder inside the data (`snugfit.data.walk`),
  each named once.

``snugfit check DATA [--csv FILE]`` prints the report; ``snugfit train`` runs the
check first and writes ``check.json`` into the run folder. The report keeps the
split it checked (`CheckReport.split`, never printed or written):
`ImageDataLoaders.from_check` builds the loaders from it, with no second split and
no second pass over the files; the unreadable and missing ones are skipped unopened.
The report and its printing are `snugfit.data.check_report`.

A dataset training cannot start from (no usable image, a single class with
readable training images for single-label data, no readable validation image)
raises `SnugfitError`.
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from PIL import Image
from rich.console import Console

from snugfit.data.check_report import (
    IMBALANCE_RATIO,
    LEAK,
    REPEAT,
    TWO_LABELS,
    BadImage,
    CheckReport,
    Duplicate,
    EmptyFolder,
    LargeImage,
    NotImage,
    TinyImage,
    tiny_side,
)
from snugfit.data.check_report import describe as describe
from snugfit.data.check_report import problem_groups as problem_groups
from snugfit.data.csv_items import csv_items
from snugfit.data.decode import failure_reason, open_image
from snugfit.data.items import FolderItems, SplitItems, folder_items
from snugfit.data.progress import progress
from snugfit.errors import SnugfitError, UnreadableImage
from snugfit.sizes import Size

# The ``X as X`` imports are re-exports: the report's printing helpers lived here
# before check_report.py was split out.

_CHUNK = 16  # files per thread-pool task: few futures, a smooth progress bar
# JPEGs are decoded at a scale where both sides stay at least this (a DCT-domain
# downscale, up to 8x per side): all the data is still read and checked.
_DRAFT = 32


class Item(NamedTuple):
    """One file of a dataset, where training would use it."""

    path: Path
    split: str  # "train" or "valid"
    labels: tuple[str, ...]  # its class; multi-label: its classes (possibly none)


class _Seen(NamedTuple):
    """One file, inspected: its content hash and size, or why it cannot be read."""

    digest: str = ""
    width: int = 0
    height: int = 0
    reason: str | None = None


def _inspect(path: Path, draft: int) -> _Seen:
    """Decode ``path`` as training would (at a reduced scale), measure and hash it."""
    try:
        open_image(path, draft)
        with Image.open(path) as img:  # the header: the size before any draft scaling
            width, height = img.size
        digest = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    except UnreadableImage as e:
        return _Seen(reason=e.reason)
    except Exception as e:  # a decoder bug must not stop the check: report the file
        return _Seen(reason=failure_reason(e))
    return _Seen(digest.hexdigest(), width, height)


def _inspect_all(paths: Sequence[Path], draft: int, workers: int, console: Console) -> list[_Seen]:
    """`_inspect` each path in a thread pool, in order, with a progress bar."""
    chunks = [paths[i : i + _CHUNK] for i in range(0, len(paths), _CHUNK)]

    def run(chunk: Sequence[Path]) -> list[_Seen]:
        return [_inspect(p, draft) for p in chunk]

    seen: list[_Seen] = []
    with (
        # Over Pillow's pixel limit an image is listed as large, not warned about per
        # file; the threads share these filters (set here, in the calling thread, while
        # the pool lives: warning filters are process-wide).
        warnings.catch_warnings(),
        ThreadPoolExecutor(max_workers=workers) as pool,
        progress(console, len(paths), "checking images") as advance,
    ):
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        for results in pool.map(run, chunks):
            seen += results
            advance(len(results))
    return seen


def check_folder(
    path: str | os.PathLike,
    valid_pct: float | None = None,
    seed: int = 42,
    *,
    train: str = "train",
    valid: str | None = None,
    size: Size = 224,
    max_imbalance: float = IMBALANCE_RATIO,
    workers: int | None = None,
    console: Console | None = None,
) -> CheckReport:
    """Check a class-folder dataset: counts, unreadable files, duplicates, imbalance, ...

    The layout, classes and train/validation split are those of
    `ImageDataLoaders.from_folder` with the same arguments.

    Args:
        path: Dataset folder.
        valid_pct: Validation fraction of a random split (as in ``from_folder``).
        seed: Seed of the random split.
        train: Name of the training folder.
        valid: Name of the validation folder (None: ``val`` or ``valid``).
        size: The training size (a side, or ``(height, width)``): images with a
            side under `tiny_side` of it (a quarter) are reported as tiny.
        max_imbalance: Largest/smallest class ratio flagged above this.
        workers: Decoding threads (default: twice the CPU count, at most 16).
        console: Where the progress bar is shown (default: stderr, on a terminal).

    Returns:
        The `CheckReport`.

    Raises:
        SnugfitError: Layout errors (as ``from_folder``), no readable image,
            readable training images in one class only, or no readable
            validation image.
    """
    start = time.perf_counter()
    root = Path(path)
    found = folder_items(root, train, valid, valid_pct, seed)
    vocab = found.vocab
    items = [Item(Path(p), "train", (vocab[lab],)) for p, lab in found.train]
    items += [Item(Path(p), "valid", (vocab[lab],)) for p, lab in found.valid]
    report = check_items(
        items,
        vocab,
        root,
        layout="split" if found.valid_dir is None else "folders",
        valid_pct=found.valid_pct,
        size=size,
        max_imbalance=max_imbalance,
        workers=workers,
        console=console,
    )
    report.unread = [d.relative_to(root).as_posix() for d in found.unread]
    report.unlabelled_folders = {d.relative_to(root).as_posix(): n for d, n in found.unlabelled}
    report.empty = _empty_folders(found, report.counts)
    report.links = found.links
    report.not_images = [NotImage.of(p) for p in found.others]
    report.split = SplitItems(found.train, found.valid, vocab, False, seed)
    report.seconds = time.perf_counter() - start
    return report


def check_csv(
    path: str | os.PathLike,
    csv_fname: str | os.PathLike = "labels.csv",
    folder: str | None = None,
    fn_col: int | str = 0,
    label_col: int | str = 1,
    valid_col: int | str | None = None,
    valid_pct: float | None = None,
    seed: int = 42,
    label_delim: str | None = None,
    *,
    header: bool = True,
    suffix: str = "",
    size: Size = 224,
    max_imbalance: float = IMBALANCE_RATIO,
    workers: int | None = None,
    console: Console | None = None,
) -> CheckReport:
    """Check a dataset listed in a CSV file, as `ImageDataLoaders.from_csv` reads it.

    The arguments up to ``label_delim``, ``header`` and ``suffix`` are those of
    ``from_csv`` (``valid_pct`` None: 0.2); with ``label_delim`` the data is
    multi-label and the counts are per label. Rows naming files that do not exist are reported in ``missing``
    (and skipped by training), not raised, unless no image is usable.

    Raises:
        SnugfitError: CSV errors (as ``from_csv``), no usable image, usable
            training images in one class only (single-label), or no usable
            validation image.
    """
    start = time.perf_counter()
    root = Path(path)
    found = csv_items(
        root,
        csv_fname,
        folder,
        fn_col,
        label_col,
        valid_col,
        0.2 if valid_pct is None else valid_pct,
        header,
        seed,
        label_delim,
        suffix,
    )
    vocab = found.vocab

    def names(lab) -> tuple[str, ...]:
        return tuple(vocab[i] for i in lab) if found.multi_label else (vocab[lab],)

    items = [Item(Path(p), "train", names(lab)) for p, lab in found.train]
    items += [Item(Path(p), "valid", names(lab)) for p, lab in found.valid]
    csv_name = found.csv_path.name
    missing = {
        str(f): f"no such file (listed in {csv_name}, line {n}{'; ' if note else ''}{note})"
        for f, n, note in found.missing
    }
    report = check_items(
        items,
        vocab,
        root,
        layout="split" if found.valid_pct is not None else "column",
        valid_pct=found.valid_pct,
        csv=str(found.csv_path),
        multi_label=found.multi_label,
        missing=missing,
        size=size,
        max_imbalance=max_imbalance,
        workers=workers,
        console=console,
    )
    report.unlabelled = [
        BadImage(str(p), "", "", f"empty label cell ({csv_name}, line {n})")
        for p, n in found.unlabelled
    ]
    report.list_delim = found.list_delim
    report.found_as = dict(found.found_as)
    report.split = SplitItems(found.train, found.valid, vocab, found.multi_label, seed)
    report.seconds = time.perf_counter() - start
    return report


def check_items(
    items: Sequence[Item],
    classes: Sequence[str],
    root: str | os.PathLike,
    *,
    layout: str = "split",
    valid_pct: float | None = None,
    csv: str | None = None,
    multi_label: bool = False,
    missing: dict[str, str] | None = None,
    size: Size = 224,
    max_imbalance: float = IMBALANCE_RATIO,
    workers: int | None = None,
    console: Console | None = None,
) -> CheckReport:
    """Decode, measure and hash split items: what `check_folder` and `check_csv` share.

    Args:
        items: The dataset's files, with their split and labels.
        classes: Class names, in label order.
        root: The dataset folder (paths are shown relative to it).
        layout: How the validation set was chosen (see `CheckReport.layout`).
        valid_pct: The random split's fraction, for ``layout="split"``.
        csv: The CSV file the items were read from, if any.
        multi_label: An item may have any number of labels.
        missing: Files listed but absent, path → reason: reported, not opened.
        size: The training size (a side, or ``(height, width)``): images with a
            side under `tiny_side` of it (a quarter) are reported as tiny.
        max_imbalance: Largest/smallest class ratio flagged above this.
        workers: Decoding threads (default: twice the CPU count, at most 16).
        console: Where the progress bar is shown (default: stderr, on a terminal).

    Raises:
        SnugfitError: See `check_folder` and `check_csv`.
    """
    start = time.perf_counter()
    missing = missing or {}
    if workers is None:
        workers = min(16, 2 * (os.cpu_count() or 1))
    present = [it for it in items if str(it.path) not in missing]
    seen = _inspect_all(
        [it.path for it in present], _DRAFT, workers, console or Console(stderr=True)
    )
    report = CheckReport(
        root=str(root),
        layout=layout,
        valid_pct=valid_pct,
        classes=list(classes),
        counts={s: dict.fromkeys(classes, 0) for s in ("train", "valid")},
        files=len(items),
        images={"train": 0, "valid": 0},
        csv=csv,
        multi_label=multi_label,
        unusable=dict.fromkeys(classes, 0),
        max_imbalance=max_imbalance,
        min_side=tiny_side(size),
        max_pixels=Image.MAX_IMAGE_PIXELS,
    )
    _tally(report, items, iter(seen), missing)
    _fatal(report)
    trained = [n for n in report.counts["train"].values() if n]
    report.imbalance = max(trained) / min(trained) if trained else 1.0
    report.seconds = time.perf_counter() - start
    return report


def _tally(report: CheckReport, items: Sequence[Item], seen, missing: dict[str, str]) -> None:
    """Count ``items`` into ``report``: usable per class and split, unusable, tiny,
    large, duplicates. ``seen`` yields the `_inspect` result of each item not ``missing``."""
    by_digest: dict[str, list[tuple[Path, str, str]]] = defaultdict(list)
    for p, split, labels in items:
        label = " ".join(labels)
        if str(p) in missing:
            report.missing.append(BadImage(str(p), split, label, missing[str(p)]))
            s = None
        else:
            s = next(seen)
            if s.reason is not None:
                report.unreadable.append(BadImage(str(p), split, label, s.reason))
        if s is None or s.reason is not None:
            for lab in labels:
                report.unusable[lab] += 1
            continue
        report.images[split] += 1
        for lab in labels:
            report.counts[split][lab] += 1
        by_digest[s.digest].append((p, split, label))
        if min(s.width, s.height) < report.min_side:
            report.tiny.append(TinyImage(str(p), split, label, s.width, s.height))
        limit = report.max_pixels  # Pillow's test: max(1, w) * max(1, h) > limit
        if limit is not None and max(1, s.width) * max(1, s.height) > limit:
            report.large.append(LargeImage(str(p), split, label, s.width, s.height))
    report.duplicates = [_duplicate(g) for g in by_digest.values() if len(g) > 1]


def _class_folder(found: FolderItems, split: str, label: str) -> Path:
    parent = (
        found.valid_dir if split == "valid" and found.valid_dir is not None else found.train_dir
    )
    return parent / label


def _duplicate(group: list[tuple[Path, str, str]]) -> Duplicate:
    splits = [s for _, s, _ in group]
    labels = [lab for _, _, lab in group]
    kinds = []
    if len(set(splits)) > 1:
        kinds.append(LEAK)
    if len(set(labels)) > 1:
        kinds.append(TWO_LABELS)
    if len(set(zip(splits, labels, strict=True))) < len(group):
        kinds.append(REPEAT)
    return Duplicate(kinds, [str(p) for p, _, _ in group], splits, labels)


def _subfolders(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))


def _empty_folders(found: FolderItems, counts: dict[str, dict[str, int]]) -> list[EmptyFolder]:
    """Class folders with no image file (left out of the classes), or none readable."""
    usable_in: dict[Path, int] = defaultdict(int)  # class folder -> usable images
    for split, per_class in counts.items():
        for label, n in per_class.items():
            usable_in[_class_folder(found, split, label)] += n
    with_files = {_class_folder(found, "train", c) for c in found.vocab}
    if found.valid_dir is not None:
        with_files |= {found.valid_dir / found.vocab[lab] for _, lab in found.valid}
    parents = [found.train_dir] + ([found.valid_dir] if found.valid_dir is not None else [])
    out = []
    not_followed = {link.path for link in found.links}
    for d in (d for parent in parents for d in _subfolders(parent)):
        if str(d) in not_followed:
            continue  # a loop, listed as such
        if d not in with_files:
            out.append(EmptyFolder(str(d), d.name, "no image files"))
        elif not usable_in[d]:
            out.append(EmptyFolder(str(d), d.name, "no readable images"))
    return out


def _fatal(report: CheckReport) -> None:
    """Raise when training cannot start from what the check found."""
    where = report.csv or report.root
    if not report.usable:
        if not report.unreadable:
            bad = report.missing[0]
            raise SnugfitError(
                f"{where}: no usable images (none of the {report.files} files listed exists; "
                f"e.g. {bad.path})"
            )
        bad = report.unreadable[0]
        missing = f", {len(report.missing)} missing" if report.missing else ""
        raise SnugfitError(
            f"{where}: no readable images ({report.files} image files{missing}, none can be "
            f"decoded; e.g. {bad.path}: {bad.reason})"
        )
    if not report.images["train"]:
        raise SnugfitError(f"{where}: the training set is empty (no readable images)")
    trained = [c for c, n in report.counts["train"].items() if n]
    if len(trained) < 2 and not report.multi_label:
        raise SnugfitError(
            f"{where}: only one class ('{trained[0]}') has readable training images; "
            "need at least two"
        )
    if not report.images["valid"]:
        raise SnugfitError(f"{where}: the validation set is empty (no readable images)")
