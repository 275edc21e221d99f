"""What the data check found: `CheckReport`, its parts, and how it is printed.

`snugfit.data.check` fills a report; ``check.json`` is its `CheckReport.to_dict`, and
`problem_groups` and `describe` read that dict back for the terminal and for the
run's ``report.html``; they read a segmentation folder's report too
(`snugfit.data.check_seg_report`, ``"task": "segmentation"``). The split items the check used (`CheckReport.split`) travel
with the report to the loaders but are never printed or written.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from snugfit.data.csv_items import list_hint
from snugfit.data.items import SplitItems
from snugfit.data.walk import SkippedLink, extension
from snugfit.sizes import Size, as_hw

IMBALANCE_RATIO = 10.0  # largest / smallest class (training images) flagged from here
# An image is tiny when training would enlarge it more than this many times: its
# shorter side is under this fraction of the training size's shorter side.
TINY_ENLARGEMENT = 4
_SHOWN = 10  # problems listed per kind in the table; check.json has them all

LEAK = "train/valid leak"
TWO_LABELS = "two labels"
REPEAT = "repeat in a class"

# What can be wrong with a segmentation folder's files (`PairProblem.kind`), and the
# heading each kind is listed under.
PAIR_PROBLEMS = {
    "no mask": "images without a mask: {n}, not used",
    "same name": "images whose name another image has: {n}, not used (a mask is per name)",
    "no image": "masks without an image: {n}, not used",
    "unreadable": "unreadable images or masks: {n} pair(s), skipped by training",
    "mask format": "masks that are not 8-bit class indices: {n} pair(s), skipped by training",
    "size": "image and mask of different sizes: {n} pair(s), skipped by training",
    "values": "masks with values that are neither a class nor void (255): {n} pair(s), "
    "skipped by training",
    "unknown name": "names in the validation list that are no image: {n}, ignored",
    "bad row": "rows of run-length masks that cannot be used: {n} (their images are not used)",
    "link": "folders not followed: {n} (each real folder is read once; run folders are no data)",
    "not image": "not images: {n} file(s) in images/ or masks/, not read (by extension)",
}


def tiny_side(size: Size) -> int:
    """The shortest side (pixels) an image of a dataset trained at ``size`` (a side, or
    ``(height, width)``) may have before it counts as tiny: a quarter of the training
    size's shorter side, rounded up, so that a tiny image is one training enlarges more
    than `TINY_ENLARGEMENT` times.

    >>> tiny_side(224), tiny_side(32), tiny_side((1400, 2100))
    (56, 8, 350)
    """
    return math.ceil(min(as_hw(size)) / TINY_ENLARGEMENT)


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
class LargeImage:
    """A readable image over Pillow's pixel limit (``Image.MAX_IMAGE_PIXELS``), but not
    over twice it (refused, so unreadable): decoded with a DecompressionBombWarning."""

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


@dataclass(frozen=True)
class NotImage:
    """A file whose extension is no image format (`snugfit.data.walk.IMAGE_EXTENSIONS`):
    not read, so never trained on."""

    path: str
    reason: str

    @classmethod
    def of(cls, path: Path) -> NotImage:
        return cls(str(path), f"{extension(path)} is no image format snugfit reads")


class ReportText:
    """What a check report writes and prints, whatever it checked: its JSON, the
    problem lines (`problem_groups` of `to_dict`), where its items come from
    (`describe`), and the whole print-out ending with ``checked_line``."""

    root: str

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def table(self) -> Table:
        raise NotImplementedError

    def checked_line(self) -> str:
        raise NotImplementedError

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write `to_dict` as JSON (UTF-8, file names as they are). Returns the path."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", "utf-8")
        return path

    def lines(self) -> list[str]:
        """The problems, as plain text lines (paths relative to ``root``)."""
        out = []
        for head, items in problem_groups(self.to_dict(), self._relative):
            out.append(head)
            out += listed([f"  {item}" for item in items])
        return out or ["no problems found"]

    def print(self, console: Console) -> None:
        """Print `table` and `lines` (lines unwrapped, so paths stay whole in a log)."""
        # markup off: file names may hold "[...]"
        plain = {"markup": False, "highlight": False, "soft_wrap": True}
        console.print(f"check: {self.root} ({self.describe()})", **plain)
        console.print(self.table())
        for line in self.lines():
            console.print(line, **plain)
        console.print(self.checked_line(), **plain)

    def describe(self) -> str:
        """Where the items and the split come from, in words."""
        return describe(self.to_dict(), self._relative)

    def _relative(self, path: str) -> str:
        try:
            return str(Path(path).relative_to(self.root))
        except ValueError:
            return path


@dataclass
class CheckReport(ReportText):
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
        unlabelled: Single-label CSV rows with an empty label cell, or files whose
            name ``label_re`` does not label (not items).
        list_delim: Single-label CSV classes look like lists split by this
            (`snugfit.data.csv_items.list_delimiter`): multi-label data read without
            ``label_delim``; None when they do not.
        unusable: Unreadable or missing files per class (multi-label: per label).
        unread: Folders of class folders beside the training folder that are not
            read (a ``test/``), relative to ``root``.
        unlabelled_folders: Folders of images without class folders beside the
            training folder, not read (Kaggle's ``test/``), relative to ``root``,
            with their images' count.
        label_re: The pattern the classes were read from file names by (``--label-re``).
        found_as: CSV names without their extension found with one, per extension
            (``{".png": 3662}``; `snugfit.data.csv_items`).
        duplicates: Groups of files with the same bytes (usable files only).
        tiny: Readable images with a side under ``min_side``.
        large: Readable images over ``max_pixels`` (and not over twice it, which
            makes them unreadable).
        empty: Class folders with nothing usable.
        links: Links to folders not followed: loops (a link to a folder that holds
            it) and links to a folder already read (`snugfit.data.walk`).
        not_images: Files in the class folders whose extension is no image format.
        imbalance: Largest over smallest class, counting training images of
            classes that have some.
        max_imbalance: Threshold above which ``imbalance`` is flagged.
        min_side: Threshold for ``tiny``, in pixels: `tiny_side` of the training size.
        max_pixels: Pillow's pixel limit when checked (``Image.MAX_IMAGE_PIXELS``;
            None: no limit).
        seconds: Time the check took.
        split: The split items the check looked at (None when unknown, e.g. a
            report read back from ``check.json``), for `ImageDataLoaders.from_check`;
            not part of `to_dict`, ``check.json`` or the printed report.
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
    unlabelled: list[BadImage] = field(default_factory=list)
    list_delim: str | None = None
    unusable: dict[str, int] = field(default_factory=dict)
    unread: list[str] = field(default_factory=list)
    unlabelled_folders: dict[str, int] = field(default_factory=dict)
    label_re: str | None = None
    found_as: dict[str, int] = field(default_factory=dict)
    duplicates: list[Duplicate] = field(default_factory=list)
    tiny: list[TinyImage] = field(default_factory=list)
    large: list[LargeImage] = field(default_factory=list)
    empty: list[EmptyFolder] = field(default_factory=list)
    links: list[SkippedLink] = field(default_factory=list)
    not_images: list[NotImage] = field(default_factory=list)
    imbalance: float = 1.0
    max_imbalance: float = IMBALANCE_RATIO
    min_side: int = 56  # tiny_side(224)
    max_pixels: int | None = None
    seconds: float = 0.0
    split: SplitItems | None = field(default=None, repr=False, compare=False)

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
            + len(self.unlabelled)
            + (self.list_delim is not None)
            + len(self.duplicates)
            + len(self.tiny)
            + len(self.large)
            + len(self.empty)
            + len(self.links)
            + len(self.not_images)
            + self.imbalanced
        )

    def to_dict(self) -> dict[str, Any]:
        """The report as plain types, with ``usable`` and ``imbalanced`` added (not ``split``)."""
        plain = asdict(dataclasses.replace(self, split=None))
        del plain["split"]  # what the loaders need, not what the check found
        return {**plain, "usable": self.usable, "imbalanced": self.imbalanced}

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

    def checked_line(self) -> str:
        return f"checked {self.files} files in {self.seconds:.1f} s"


def describe(report: dict, rel: Callable[[str], str] = str) -> str:
    """Where a report's items and split come from, in words (``report``: `CheckReport.to_dict`)."""
    if report.get("task") == "segmentation":
        codes = report.get("codes")
        classes = f"classes from {Path(codes).name}" if codes else "classes numbered by mask value"
        if report.get("binary"):
            classes += " (binary masks: only 0 and 255, 255 read as class 1, not void)"
        if report.get("thresholded"):
            classes += f"; {report['thresholded']} JPEG mask(s) read as binary, grey >= 128"
        where = f"segmentation: {report.get('folders', 'images/ and masks/')}, {classes}"
        layout = report.get("layout", "split")
        if layout == "split":
            where += f"; validation split off at random, {report['valid_pct']:g}"
        elif layout.endswith("/"):  # a split folder
            where += f"; validation images in {layout}"
        else:
            where += f"; validation images listed in {layout}"
        for name, n in report.get("held_out_folders", {}).items():
            where += f"; not read: {name}/ with {n} pairs (a test split)"
        return where + _unlabelled(report, "masks", "segments")
    if report.get("layout") == "folders":
        how = "train and validation folders"
    elif report.get("layout") == "column":
        how = "validation rows marked in a column"
    else:
        how = f"validation split off at random, {report['valid_pct']:g}"
    if report.get("csv") is not None:
        kind = "multi-label" if report.get("multi_label") else "single-label"
        how = f"{rel(report['csv'])}, {kind}; {how}"
    if report.get("label_re") is not None:
        how = f"classes from file names by '{report['label_re']}'; {how}"
    if report.get("found_as"):
        found = ", ".join(f"{n} as {ext}" for ext, n in report["found_as"].items())
        how += f"; file names listed without their extension found: {found}"
    if report.get("unread"):
        first = report["unread"][0]
        folders = ", ".join(f"{name}/" for name in report["unread"])
        how += f"; not read: {folders} (--valid-folder {first} validates on it)"
    return how + _unlabelled(report, "class folders", "labels")


def _unlabelled(report: dict, without: str, does: str) -> str:
    """The clause naming a report's folders of unlabelled images (none: "")."""
    if not report.get("unlabelled_folders"):
        return ""
    folders = ", ".join(
        f"{name}/ with {n} images" for name, n in report["unlabelled_folders"].items()
    )
    return f"; not read, without {without}: {folders} (snugfit predict {does} them)"


def problem_groups(report: dict, rel: Callable[[str], str] = str) -> list[tuple[str, list[str]]]:
    """A report's problems as ``(heading, items)``, for the terminal and for report.html.

    ``report`` is `CheckReport.to_dict` (or check.json read back); ``rel`` shortens paths.
    """
    groups = []
    if report.get("task") == "segmentation":
        return _pair_groups(report, rel)

    def files(key: str, head: str) -> None:
        if report.get(key):
            items = [f"{rel(b['path'])}: {b['reason']}" for b in report[key]]
            groups.append((head.format(n=len(items)), items))

    files("unreadable", "unreadable: {n} file(s), skipped by training")
    files("missing", "missing: {n} file(s) listed but not found, skipped")
    if report.get("label_re") is not None:
        files("unlabelled", "no label: {n} file(s) whose name the pattern does not label, skipped")
    else:
        files("unlabelled", "no label: {n} row(s) with an empty label cell, skipped")
    if report.get("list_delim"):
        groups.append((list_hint(report["classes"], report["list_delim"]), []))
    if report.get("duplicates"):
        items = [
            f"{', '.join(d['kinds'])}: {_same_bytes(d['paths'], rel)}" for d in report["duplicates"]
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
        groups.append((f"tiny images: {len(items)} with a side under {report['min_side']} px "
                       f"(1/{TINY_ENLARGEMENT} of the training size: training enlarges them more "
                       f"than {TINY_ENLARGEMENT}x)", items))  # fmt: skip
    if report.get("large"):
        items = [f"{rel(t['path'])}: {t['width']}x{t['height']}" for t in report["large"]]
        groups.append((f"large images: {len(items)} over Pillow's limit of "
                       f"{report['max_pixels']:,} pixels (Image.MAX_IMAGE_PIXELS): decoded with "
                       "a warning, slowly; twice the limit is refused", items))  # fmt: skip
    files("empty", "empty class folders: {n}")
    files("links", PAIR_PROBLEMS["link"])
    files("not_images", "not images: {n} file(s) in the class folders, not read (by extension)")
    return groups


def _same_bytes(paths: list[str], rel: Callable[[str], str]) -> str:
    """Files with the same bytes, ``a = b``; a file a CSV lists more than once is named
    once, with its count.

    >>> _same_bytes(["a.jpg", "b.jpg", "a.jpg"], str)
    'a.jpg (listed 2 times) = b.jpg'
    """
    counts = Counter(paths)
    return " = ".join(
        rel(p) + (f" (listed {counts[p]} times)" if counts[p] > 1 else "") for p in counts
    )


def _pair_groups(report: dict, rel: Callable[[str], str]) -> list[tuple[str, list[str]]]:
    """`problem_groups` of a segmentation folder's report: each kind of `PAIR_PROBLEMS`,
    then the classes absent from the training masks."""
    groups = []
    root = str(report.get("root", "")).rstrip("/\\") + os.sep  # reasons name files too

    def line(p: dict) -> str:
        return f"{rel(p['path'])}: {p['reason'].replace(root, '')}"

    for kind, head in PAIR_PROBLEMS.items():
        items = [line(p) for p in report["issues"] if p["kind"] == kind]
        if items:
            groups.append((head.format(n=len(items)), items))
    if report.get("absent"):
        names = ", ".join(repr(c) for c in report["absent"])
        groups.append((f"absent from the training masks: {names}; the model never learns them", []))
    return groups


def listed(lines: list[str]) -> list[str]:
    """At most `_SHOWN` lines, then one saying how many more the JSON report has."""
    if len(lines) <= _SHOWN:
        return lines
    return [*lines[:_SHOWN], f"  ... and {len(lines) - _SHOWN} more (all in the JSON report)"]
