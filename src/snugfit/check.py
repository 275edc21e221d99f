"""Check an image folder before training: what is in it, and what is wrong with it.

`check_folder` reads a dataset in the layouts `ImageDataLoaders.from_folder`
accepts (the same rules, the same split) and fully decodes every file, in
threads: Pillow releases the GIL while it decodes, and JPEGs are decoded at a
reduced scale (``draft``), which still reads every byte, so truncated files are
found. It reports:

* usable images per class and split;
* unreadable files, with the reason training would give (`snugfit.decode.open_image`);
* duplicates, files with the same bytes: across train and validation (a
  leak that inflates validation scores), under two labels, or twice in a class;
* class imbalance: the largest over the smallest class (training images),
  flagged from `IMBALANCE_RATIO`;
* tiny images, with a side under `MIN_SIDE` pixels;
* class folders with no image file, or none that can be read.

``snugfit check DATA`` prints the report; ``snugfit train`` runs the check first,
writes ``check.json`` into the run folder and gives the unreadable files to the
loaders, which skip them without opening them again.

A dataset training cannot start from (no readable image, a single class with
readable training images, no readable validation image) raises `SnugfitError`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from PIL import Image
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .data import _progress
from .decode import _reason, open_image
from .errors import SnugfitError, UnreadableImage
from .items import _folder_items, _FolderItems

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


@dataclass(frozen=True)
class BadImage:
    """A file that cannot be decoded; training skips it."""

    path: str
    split: str  # "train" or "valid"
    label: str
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
    """What `check_folder` found. Every field is a plain type (see `to_json`).

    Attributes:
        root: The dataset folder.
        layout: ``"folders"`` (train and validation folders) or ``"split"``
            (validation split off at random, ``valid_pct``).
        valid_pct: The split fraction, for ``"split"``.
        classes: Class names (training labels, sorted).
        counts: Usable images, ``counts[split][class]``, splits ``train`` and ``valid``.
        files: Image files found (usable or not).
        unreadable: Files that cannot be decoded.
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
    unreadable: list[BadImage] = field(default_factory=list)
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
        return sum(n for split in self.counts.values() for n in split.values())

    @property
    def imbalanced(self) -> bool:
        """Whether ``imbalance`` is above ``max_imbalance``."""
        return self.imbalance > self.max_imbalance

    @property
    def unreadable_files(self) -> dict[str, str]:
        """Unreadable files, path → reason (what `ImageDataLoaders` takes as ``unreadable``)."""
        return {b.path: b.reason for b in self.unreadable}

    @property
    def problems(self) -> int:
        """Number of things reported (files, groups, folders, and the imbalance)."""
        return (
            len(self.unreadable)
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
        t = Table(title=f"{self.usable} of {self.files} images usable")
        for name in ("class", "train", "valid", "unreadable"):
            t.add_column(name, justify="left" if name == "class" else "right")
        bad = defaultdict(int)
        for b in self.unreadable:
            bad[b.label] += 1
        for c in self.classes:
            t.add_row(
                Text(c),
                str(self.counts["train"][c]),
                str(self.counts["valid"][c]),
                str(bad[c]),
            )
        t.add_row(
            "total",
            str(sum(self.counts["train"].values())),
            str(sum(self.counts["valid"].values())),
            str(len(self.unreadable)),
            style="bold",
        )
        return t

    def lines(self) -> list[str]:
        """The problems, as plain text lines (paths relative to ``root``)."""
        rel = self._relative
        out = []
        if self.unreadable:
            out.append(f"unreadable: {len(self.unreadable)} file(s), skipped by training")
            out += _listed([f"  {rel(b.path)}: {b.reason}" for b in self.unreadable])
        if self.duplicates:
            out.append(f"duplicates: {len(self.duplicates)} group(s) of identical files")
            out += _listed(
                [
                    f"  {', '.join(d.kinds)}: {' = '.join(map(rel, d.paths))}"
                    for d in self.duplicates
                ]
            )
        if self.imbalanced:
            train = self.counts["train"]
            used = {c: n for c, n in train.items() if n}
            big, small = max(used, key=used.get), min(used, key=used.get)
            out.append(
                f"imbalance: {self.imbalance:.1f}x between the largest and the smallest class "
                f"({big}: {used[big]}, {small}: {used[small]} training images; "
                f"flagged above {self.max_imbalance:g}x)"
            )
        if self.tiny:
            out.append(f"tiny images: {len(self.tiny)} with a side under {self.min_side} px")
            out += _listed([f"  {rel(t.path)}: {t.width}x{t.height}" for t in self.tiny])
        if self.empty:
            out.append(f"empty class folders: {len(self.empty)}")
            out += _listed([f"  {rel(e.path)}: {e.reason}" for e in self.empty])
        if not out:
            out.append("no problems found")
        return out

    def print(self, console: Console) -> None:
        """Print `table` and `lines` (lines unwrapped, so paths stay whole in a log)."""
        if self.layout == "folders":
            how = "train and validation folders"
        else:
            how = f"validation split off at random, {self.valid_pct:g}"
        # markup off: file names may hold "[...]"
        plain = {"markup": False, "highlight": False, "soft_wrap": True}
        console.print(f"check: {self.root} ({how})", **plain)
        console.print(self.table())
        for line in self.lines():
            console.print(line, **plain)
        console.print(f"checked {self.files} files in {self.seconds:.1f} s", **plain)

    def _relative(self, path: str) -> str:
        try:
            return str(Path(path).relative_to(self.root))
        except ValueError:
            return path


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
        return _Seen(reason=_reason(e))
    return _Seen(digest.hexdigest(), width, height)


def _inspect_all(paths: Sequence[Path], draft: int, workers: int, console: Console) -> list[_Seen]:
    """`_inspect` each path in a thread pool, in order, with a progress bar."""
    chunks = [paths[i : i + _CHUNK] for i in range(0, len(paths), _CHUNK)]

    def run(chunk: Sequence[Path]) -> list[_Seen]:
        return [_inspect(p, draft) for p in chunk]

    seen: list[_Seen] = []
    with (
        ThreadPoolExecutor(max_workers=workers) as pool,
        _progress(console, len(paths), "checking images") as advance,
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
    found = _folder_items(root, train, valid, valid_pct, seed)
    vocab = found.vocab
    entries = [(Path(p), "train", vocab[lab]) for p, lab in found.train]
    entries += [(Path(p), "valid", vocab[lab]) for p, lab in found.valid]
    if workers is None:
        workers = min(16, 2 * (os.cpu_count() or 1))
    seen = _inspect_all(
        [p for p, _, _ in entries], _DRAFT, workers, console or Console(stderr=True)
    )

    counts = {s: dict.fromkeys(vocab, 0) for s in ("train", "valid")}
    unreadable, tiny = [], []
    by_digest: dict[str, list[tuple[Path, str, str]]] = defaultdict(list)
    usable_in: dict[Path, int] = defaultdict(int)  # class folder -> usable images
    for (p, split, label), s in zip(entries, seen, strict=True):
        if s.reason is not None:
            unreadable.append(BadImage(str(p), split, label, s.reason))
            continue
        counts[split][label] += 1
        usable_in[_class_folder(found, split, label)] += 1
        by_digest[s.digest].append((p, split, label))
        if min(s.width, s.height) < min_side:
            tiny.append(TinyImage(str(p), split, label, s.width, s.height))

    report = CheckReport(
        root=str(root),
        layout="split" if found.valid_dir is None else "folders",
        valid_pct=found.valid_pct,
        classes=vocab,
        counts=counts,
        files=len(entries),
        unreadable=unreadable,
        duplicates=[_duplicate(g) for g in by_digest.values() if len(g) > 1],
        tiny=tiny,
        empty=_empty_folders(found, usable_in),
        max_imbalance=max_imbalance,
        min_side=min_side,
    )
    _fatal(report)
    trained = [n for n in counts["train"].values() if n]
    report.imbalance = max(trained) / min(trained)
    report.seconds = time.perf_counter() - start
    return report


def _class_folder(found: _FolderItems, split: str, label: str) -> Path:
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


def _empty_folders(found: _FolderItems, usable_in: dict[Path, int]) -> list[EmptyFolder]:
    """Class folders with no image file (left out of the classes), or none readable."""
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
    where = report.root
    if not report.usable:
        bad = report.unreadable[0]
        raise SnugfitError(
            f"{where}: no readable images ({report.files} image files, none can be decoded; "
            f"e.g. {bad.path}: {bad.reason})"
        )
    trained = [c for c, n in report.counts["train"].items() if n]
    if not trained:
        raise SnugfitError(f"{where}: the training set is empty (no readable images)")
    if len(trained) < 2:
        raise SnugfitError(
            f"{where}: only one class ('{trained[0]}') has readable training images; "
            "need at least two"
        )
    if not sum(report.counts["valid"].values()):
        raise SnugfitError(f"{where}: the validation set is empty (no readable images)")
