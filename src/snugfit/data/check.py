"""Check a dataset before training: what is in it, and what is wrong with it.

`check_folder` reads a dataset in the layouts `ImageDataLoaders.from_folder`
accepts, `check_csv` one listed in a CSV file as `ImageDataLoaders.from_csv`
reads it (the same rules, the same split); both hand the split items to
`check_items`, which fully decodes every file, in threads: Pillow releases the
GIL while it decodes, and JPEGs are decoded at a reduced scale (``draft``),
which still reads every byte, so truncated files are found. It reports:

* usable images per class and split (multi-label: per label, so an image with
  several labels counts once under each, and per split);
* unreadable files, with the reason training would give (`snugfit.data.decode.open_image`);
* CSV rows naming files that do not exist (skipped like unreadable files);
* duplicates, files with the same bytes: across train and validation (a
  leak that inflates validation scores), under two labels (label sets), or
  twice in a class;
* class imbalance: the largest over the smallest class (training images),
  flagged from `IMBALANCE_RATIO`;
* tiny images, with a side under `MIN_SIDE` pixels;
* class folders with no image file, or none that can be read.

``snugfit check DATA [--csv FILE]`` prints the report; ``snugfit train`` runs the
check first, writes ``check.json`` into the run folder and gives the unreadable
and missing files to the loaders, which skip them without opening them again.

A dataset training cannot start from (no usable image, a single class with
readable training images for single-label data, no readable validation image)
raises `SnugfitError`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from PIL import Image
from rich.console import Console
from rich.table import Table
from rich.text import Text

from snugfit.app.config import TrainConfig
from snugfit.data.decode import failure_reason, open_image
from snugfit.data.items import FolderItems, csv_items, folder_items
from snugfit.data.progress import progress
from snugfit.errors import SnugfitError, UnreadableImage

IMBALANCE_RATIO = 10.0  # largest / smallest class (training images) flagged from here
MIN_SIDE = 32  # pixels: an image with a shorter side is reported as tiny
_SHOWN = 10  # problems listed per kind in the table; check.json has them all
_CHUNK = 16  # files per thread-pool task: few futures, a smooth progress bar
# JPEGs are decoded at a scale where both sides stay at least this (a DCT-domain
# downscale, up to 8x per side): all the data is still read and checked.
_DRAFT = 32

LEAK = "train/valid leak"
TWO_LABELS = "two labels"
REPEAT = "repeat in a class"


class Item(NamedTuple):
    """One file of a dataset, where training would use it."""

    path: Path
    split: str  # "train" or "valid"
    labels: tuple[str, ...]  # its class; multi-label: its classes (possibly none)


@dataclass(frozen=True)
class BadImage:
    """A file that cannot be decoded, or that a CSV row names but does not exist;
    training skips it."""

    path: str
    split: str  # "train" or "valid"
    label: str  # multi-label: the labels, joined by spaces (for reading)
    reason: str


@dataclass(frozen=True)
class TinyImage:
    """A readable image with a side under the minimum."""

    path: str
    split: str
    label: str
    width: int
    height: int


@dataclass(frozen=True)
class Duplicate:
    """Files with the same bytes, and what makes that a problem.

    ``kinds`` holds one or more of `LEAK` (in train and validation), `TWO_LABELS`
    (in two classes) and `REPEAT` (twice in one class of one split).
    """

    kinds: list[str]
    paths: list[str]
    splits: list[str]
    labels: list[str]


@dataclass(frozen=True)
class EmptyFolder:
    """A class folder without an image to learn from."""

    path: str
    label: str
    reason: str  # "no image files" or "no readable images"


@dataclass
class CheckReport:
    """What `check_folder` or `check_csv` found. Every field is a plain type (see `to_json`).

    Attributes:
        root: The dataset folder.
        layout: ``"folders"`` (train and validation folders), ``"split"``
            (validation split off at random, ``valid_pct``) or ``"column"``
            (a CSV column marks the validation rows).
        valid_pct: The split fraction, for ``"split"``.
        classes: Class names (training labels, sorted).
        counts: Usable images, ``counts[split][class]``, splits ``train`` and
            ``valid``; multi-label: per label, so an image counts once under
            each of its labels (and under none when it has none).
        files: Image files found or listed (usable or not).
        images: Usable images per split (each image once).
        csv: The CSV file the items were read from (None: class folders).
        multi_label: Whether an image has a set of labels.
        unreadable: Files that cannot be decoded.
        missing: Files a CSV row names that do not exist (the reason says which row).
        unusable: Unreadable or missing files per class (multi-label: per label).
        duplicates: Groups of files with the same bytes (usable files only).
        tiny: Readable images with a side under ``min_side``.
        empty: Class folders with nothing usable.
        imbalance: Largest over smallest class, counting training images of
            classes that have some.
        max_imbalance: Threshold above which ``imbalance`` is flagged.
        min_side: Threshold for ``tiny``, in pixels.
        seconds: Time the check took.
    """

    root: str
    layout: str
    valid_pct: float | None
    classes: list[str]
    counts: dict[str, dict[str, int]]
    files: int
    images: dict[str, int] = field(default_factory=dict)
    csv: str | None = None
    multi_label: bool = False
    unreadable: list[BadImage] = field(default_factory=list)
    missing: list[BadImage] = field(default_factory=list)
    unusable: dict[str, int] = field(default_factory=dict)
    duplicates: list[Duplicate] = field(default_factory=list)
    tiny: list[TinyImage] = field(default_factory=list)
    empty: list[EmptyFolder] = field(default_factory=list)
    imbalance: float = 1.0
    max_imbalance: float = IMBALANCE_RATIO
    min_side: int = MIN_SIDE
    seconds: float = 0.0

    @property
    def usable(self) -> int:
        """Images training can use."""
        return sum(self.images.values())

    @property
    def imbalanced(self) -> bool:
        """Whether ``imbalance`` is above ``max_imbalance``."""
        return self.imbalance > self.max_imbalance

    @property
    def unreadable_files(self) -> dict[str, str]:
        """Files training must skip, unreadable or missing, path → reason (what
        `ImageDataLoaders` takes as ``unreadable``)."""
        return {b.path: b.reason for b in self.unreadable + self.missing}

    @property
    def problems(self) -> int:
        """Number of things reported (files, groups, folders, and the imbalance)."""
        return (
            len(self.unreadable)
            + len(self.missing)
            + len(self.duplicates)
            + len(self.tiny)
            + len(self.empty)
            + self.imbalanced
        )

    def to_dict(self) -> dict[str, Any]:
        """The report as plain types, with ``usable`` and ``imbalanced`` added."""
        return {**asdict(self), "usable": self.usable, "imbalanced": self.imbalanced}

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write `to_dict` as JSON (UTF-8, file names as they are). Returns the path."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", "utf-8")
        return path

    def table(self) -> Table:
        """Usable images per class (rows) and split (columns), and unreadable files."""
        caption = None
        if self.multi_label:
            caption = "multi-label: an image counts once under each of its labels"
        t = Table(title=f"{self.usable} of {self.files} images usable", caption=caption)
        first = "label" if self.multi_label else "class"
        bad_name = "unreadable or missing" if self.csv is not None else "unreadable"
        for name in (first, "train", "valid", bad_name):
            t.add_column(name, justify="left" if name == first else "right")
        bad = self.unusable
        for c in self.classes:
            t.add_row(
                Text(c),
                str(self.counts["train"][c]),
                str(self.counts["valid"][c]),
                str(bad.get(c, 0)),
            )
        t.add_row(
            "images" if self.multi_label else "total",
            str(self.images.get("train", 0)),
            str(self.images.get("valid", 0)),
            str(len(self.unreadable) + len(self.missing)),
            style="bold",
        )
        return t

    def lines(self) -> list[str]:
        """The problems, as plain text lines (paths relative to ``root``)."""
        out = []
        for head, items in problem_groups(self.to_dict(), self._relative):
            out.append(head)
            out += _listed([f"  {item}" for item in items])
        return out or ["no problems found"]

    def print(self, console: Console) -> None:
        """Print `table` and `lines` (lines unwrapped, so paths stay whole in a log)."""
        # markup off: file names may hold "[...]"
        plain = {"markup": False, "highlight": False, "soft_wrap": True}
        console.print(f"check: {self.root} ({self.describe()})", **plain)
        console.print(self.table())
        for line in self.lines():
            console.print(line, **plain)
        console.print(f"checked {self.files} files in {self.seconds:.1f} s", **plain)

    def describe(self) -> str:
        """Where the items and the split come from, in words."""
        return describe(self.to_dict(), self._relative)

    def _relative(self, path: str) -> str:
        try:
            return str(Path(path).relative_to(self.root))
        except ValueError:
            return path


def describe(report: dict, rel: Callable[[str], str] = str) -> str:
    """Where a report's items and split come from, in words (``report``: `CheckReport.to_dict`)."""
    if report.get("layout") == "folders":
        how = "train and validation folders"
    elif report.get("layout") == "column":
        how = "validation rows marked in a column"
    else:
        how = f"validation split off at random, {report['valid_pct']:g}"
    if report.get("csv") is not None:
        kind = "multi-label" if report.get("multi_label") else "single-label"
        how = f"{rel(report['csv'])}, {kind}; {how}"
    return how


def problem_groups(report: dict, rel: Callable[[str], str] = str) -> list[tuple[str, list[str]]]:
    """A report's problems as ``(heading, items)``, for the terminal and for report.html.

    ``report`` is `CheckReport.to_dict` (or check.json read back); ``rel`` shortens paths.
    """
    groups = []

    def files(key: str, head: str) -> None:
        if report.get(key):
            items = [f"{rel(b['path'])}: {b['reason']}" for b in report[key]]
            groups.append((head.format(n=len(items)), items))

    files("unreadable", "unreadable: {n} file(s), skipped by training")
    files("missing", "missing: {n} file(s) listed but not found, skipped")
    if report.get("duplicates"):
        items = [
            f"{', '.join(d['kinds'])}: {' = '.join(map(rel, d['paths']))}"
            for d in report["duplicates"]
        ]
        groups.append((f"duplicates: {len(items)} group(s) of identical files", items))
    if report.get("imbalanced"):
        used = {c: n for c, n in report["counts"]["train"].items() if n}
        big, small = max(used, key=used.get), min(used, key=used.get)
        groups.append(
            (
                f"imbalance: {report['imbalance']:.1f}x between the largest and the smallest "
                f"class ({big}: {used[big]}, {small}: {used[small]} training images; "
                f"flagged above {report['max_imbalance']:g}x)",
                [],
            )
        )
    if report.get("tiny"):
        items = [f"{rel(t['path'])}: {t['width']}x{t['height']}" for t in report["tiny"]]
        groups.append((f"tiny images: {len(items)} with a side under {report['min_side']} px",
                       items))  # fmt: skip
    files("empty", "empty class folders: {n}")
    return groups


def _listed(lines: list[str]) -> list[str]:
    if len(lines) <= _SHOWN:
        return lines
    return [*lines[:_SHOWN], f"  ... and {len(lines) - _SHOWN} more (all in the JSON report)"]


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
        ThreadPoolExecutor(max_workers=workers) as pool,
        progress(console, len(paths), "checking images") as advance,
    ):
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
    min_side: int = MIN_SIDE,
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
        min_side: Images with a shorter side (pixels) are reported as tiny.
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
        min_side=min_side,
        max_imbalance=max_imbalance,
        workers=workers,
        console=console,
    )
    report.empty = _empty_folders(found, report.counts)
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
    min_side: int = MIN_SIDE,
    max_imbalance: float = IMBALANCE_RATIO,
    workers: int | None = None,
    console: Console | None = None,
) -> CheckReport:
    """Check a dataset listed in a CSV file, as `ImageDataLoaders.from_csv` reads it.

    The arguments up to ``label_delim`` are those of ``from_csv`` (``valid_pct``
    None: 0.2); with ``label_delim`` the data is multi-label and the counts are
    per label. Rows naming files that do not exist are reported in ``missing``
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
    )
    vocab = found.vocab

    def names(lab) -> tuple[str, ...]:
        return tuple(vocab[i] for i in lab) if found.multi_label else (vocab[lab],)

    items = [Item(Path(p), "train", names(lab)) for p, lab in found.train]
    items += [Item(Path(p), "valid", names(lab)) for p, lab in found.valid]
    lines = {str(f): n for f, n in found.missing}
    csv_name = found.csv_path.name
    report = check_items(
        items,
        vocab,
        root,
        layout="split" if found.valid_pct is not None else "column",
        valid_pct=found.valid_pct,
        csv=str(found.csv_path),
        multi_label=found.multi_label,
        missing={p: f"no such file (listed in {csv_name}, line {n})" for p, n in lines.items()},
        min_side=min_side,
        max_imbalance=max_imbalance,
        workers=workers,
        console=console,
    )
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
    min_side: int = MIN_SIDE,
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
        min_side: Images with a shorter side (pixels) are reported as tiny.
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
    seen = iter(
        _inspect_all([it.path for it in present], _DRAFT, workers, console or Console(stderr=True))
    )

    counts = {s: dict.fromkeys(classes, 0) for s in ("train", "valid")}
    images = dict.fromkeys(counts, 0)
    unusable = dict.fromkeys(classes, 0)
    absent, unreadable, tiny = [], [], []
    by_digest: dict[str, list[tuple[Path, str, str]]] = defaultdict(list)
    for p, split, labels in items:
        label = " ".join(labels)
        if str(p) in missing:
            absent.append(BadImage(str(p), split, label, missing[str(p)]))
            s = None
        else:
            s = next(seen)
            if s.reason is not None:
                unreadable.append(BadImage(str(p), split, label, s.reason))
        if s is None or s.reason is not None:
            for lab in labels:
                unusable[lab] += 1
            continue
        images[split] += 1
        for lab in labels:
            counts[split][lab] += 1
        by_digest[s.digest].append((p, split, label))
        if min(s.width, s.height) < min_side:
            tiny.append(TinyImage(str(p), split, label, s.width, s.height))

    report = CheckReport(
        root=str(root),
        layout=layout,
        valid_pct=valid_pct,
        classes=list(classes),
        counts=counts,
        files=len(items),
        images=images,
        csv=csv,
        multi_label=multi_label,
        unreadable=unreadable,
        missing=absent,
        unusable=unusable,
        duplicates=[_duplicate(g) for g in by_digest.values() if len(g) > 1],
        tiny=tiny,
        max_imbalance=max_imbalance,
        min_side=min_side,
    )
    _fatal(report)
    trained = [n for n in counts["train"].values() if n]
    report.imbalance = max(trained) / min(trained) if trained else 1.0
    report.seconds = time.perf_counter() - start
    return report


def check_data(cfg: TrainConfig, console: Console | None = None) -> CheckReport:
    """The data check of a run's dataset (``cfg.data``): class folders, or ``cfg.csv``.

    Raises:
        SnugfitError: As `check_folder` or `check_csv`; CSV options without
            ``cfg.csv``, or both ``valid_col`` and ``valid_pct``.
    """
    _check_data_options(cfg)
    if cfg.csv is None:
        return check_folder(cfg.data, valid_pct=cfg.valid_pct, seed=cfg.seed, console=console)
    return check_csv(cfg.data, **csv_args(cfg), console=console)


def _check_data_options(cfg: TrainConfig) -> None:
    """CSV options without a CSV, or two ways of choosing the validation set, are errors."""
    defaults = TrainConfig("")
    if cfg.csv is None:
        given = [
            "--" + name.replace("_", "-")
            for name in ("folder", "fn_col", "label_col", "label_delim", "valid_col")
            if getattr(cfg, name) != getattr(defaults, name)
        ]
        if given:
            raise SnugfitError(f"{', '.join(given)}: only with --csv (the data is class folders)")
    elif cfg.valid_col is not None and cfg.valid_pct is not None:
        raise SnugfitError("--valid-col and --valid-pct: give one (a column, or a random split)")


def csv_args(cfg: TrainConfig) -> dict:
    """``ImageDataLoaders.from_csv``'s (and `check_csv`'s) arguments from a run's ``cfg``."""
    return {
        "csv_fname": cfg.csv,
        "folder": cfg.folder,
        "fn_col": cfg.fn_col,
        "label_col": cfg.label_col,
        "valid_col": cfg.valid_col,
        "valid_pct": 0.2 if cfg.valid_pct is None else cfg.valid_pct,
        "seed": cfg.seed,
        "label_delim": cfg.label_delim,
    }


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
    for d in (d for parent in parents for d in _subfolders(parent)):
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
