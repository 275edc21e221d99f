"""What the data check of a segmentation folder found: `SegmentationCheckReport`.

`snugfit.data.check_seg.check_segmentation` fills one. Like `CheckReport` it prints
(a table of pixel share per class and split, then each problem naming its file),
writes ``check.json`` (`to_dict`: its problems are listed by
`snugfit.data.check_report.problem_groups`, so ``report.html`` shows them too) and
keeps the split it checked for `SegmentationDataLoaders.from_check`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.table import Table
from rich.text import Text

from snugfit.data.check_report import ReportText
from snugfit.data.items import SplitItems

SPLITS = ("train", "valid")
VOID_ROW = "(void)"
# Kinds of PAIR_PROBLEMS that leave an image out: it has no (usable) mask.
MISSING = ("no mask", "same name")


@dataclass(frozen=True)
class PairProblem:
    """A problem with one file of a segmentation folder.

    Attributes:
        kind: One of `snugfit.data.check_report.PAIR_PROBLEMS`.
        path: The file at fault (the mask for a mask's problem).
        split: ``"train"`` or ``"valid"``; ``""`` for a file of no pair (an image
            without a mask, a mask without an image).
        reason: What is wrong, in words.
        image: The pair's image, which training skips (None: a mask without an image).
    """

    kind: str
    path: str
    split: str
    reason: str
    image: str | None = None


@dataclass
class SegmentationCheckReport(ReportText):
    """What `check_segmentation` found. Every field is a plain type (see `to_json`).

    Attributes:
        root: The dataset folder.
        layout: The file listing the validation images (``"valid.txt"``, VOC's
            ``"ImageSets/Segmentation/val.txt"``) or ``"split"`` (random, ``valid_pct``).
        valid_pct: The split fraction, for ``"split"``.
        classes: Class names: codes.txt's, or ``class_0`` ... up to the largest mask value.
        codes: The codes file read (None: classes numbered from the masks).
        files: Image files found.
        masks: Mask files found.
        images: Usable pairs per split.
        counts: Usable pairs whose mask holds each class, ``counts[split][class]``.
        pixels: Mask pixels per class and void (``"(void)"``), ``pixels[split][name]``,
            counted at the masks' own resolution.
        issues: Every problem found, each naming its file (`PairProblem`).
        absent: Classes with no pixel in the training masks.
        binary: The masks hold only 0 and 255 and are read as binary masks: 255 is
            class 1, not void (`snugfit.data.masks.binary_masks`).
        thresholded: Pairs whose mask is a JPEG, read as a binary mask thresholded
            halfway (`snugfit.data.masks.thresholded`).
        colours: Class i's ``[r, g, b]`` in colour masks (a class_dict.csv or
            labelmap.txt); None: masks of class indices.
        folders: The layout's folders, in words (``"images/ and masks/"``, or VOC's).
        unlabelled_folders: Folders of images without masks, not read: beside the
            images' (Carvana's ``test/``) or a test folder among split folders
            (``images/test``), relative to ``root``, with their images' count.
        held_out_folders: Test folders among split folders whose pairs are neither
            trained nor validated, relative to ``root``, with their pairs' count.
        seconds: Time the check took.
        split: The split pairs and classes, for `SegmentationDataLoaders.from_check`;
            not part of `to_dict`, ``check.json`` or the printed report.
    """

    root: str
    layout: str
    valid_pct: float | None
    classes: list[str]
    codes: str | None = None
    files: int = 0
    masks: int = 0
    images: dict[str, int] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    pixels: dict[str, dict[str, int]] = field(default_factory=dict)
    issues: list[PairProblem] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)
    binary: bool = False
    thresholded: int = 0
    colours: list[list[int]] | None = None
    folders: str = "images/ and masks/"
    unlabelled_folders: dict[str, int] = field(default_factory=dict)
    held_out_folders: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    split: SplitItems | None = field(default=None, repr=False, compare=False)

    task = "segmentation"

    @property
    def usable(self) -> int:
        """Pairs training can use."""
        return sum(self.images.values())

    @property
    def unreadable(self) -> list[PairProblem]:
        """Pairs that are skipped because a file is unreadable or wrong (format, size, values)."""
        return [p for p in self.issues if p.image is not None and p.kind not in MISSING]

    @property
    def missing(self) -> list[PairProblem]:
        """Images without a (usable) mask name."""
        return [p for p in self.issues if p.kind in MISSING]

    @property
    def unreadable_files(self) -> dict[str, str]:
        """Images training must skip, image → reason naming the file at fault (what
        `SegmentationDataLoaders` takes as ``unreadable``)."""
        out = {}
        for p in self.issues:
            if p.image is not None:
                out[p.image] = p.reason if p.path == p.image else f"mask {p.path}: {p.reason}"
        return out

    @property
    def problems(self) -> int:
        """Number of things reported (files, and the classes absent from training)."""
        return len(self.issues) + len(self.absent)

    def shares(self, split: str) -> dict[str, float]:
        """Each class's (and void's) share of the split's mask pixels, in ``[0, 1]``."""
        total = sum(self.pixels.get(split, {}).values())
        return {name: n / total if total else 0.0 for name, n in self.pixels[split].items()}

    def to_dict(self) -> dict[str, Any]:
        """The report as plain types, with ``task``, ``usable``, ``unreadable`` and
        ``missing`` added (not ``split``)."""
        plain = asdict(dataclasses.replace(self, split=None))
        del plain["split"]
        return {
            **plain,
            "task": self.task,
            "usable": self.usable,
            "unreadable": [asdict(p) for p in self.unreadable],
            "missing": [asdict(p) for p in self.missing],
        }

    def table(self) -> Table:
        """Pixel share per class (rows) and split, and the pairs holding each class."""
        t = Table(
            title=f"{self.usable} of {self.files} images usable (with their masks)",
            caption="pixels: share of the split's mask pixels; images: holding the class",
        )
        t.add_column("class", justify="left")
        for name in ("train pixels", "valid pixels", "train images", "valid images"):
            t.add_column(name, justify="right")
        train, valid = self.shares("train"), self.shares("valid")
        for c in [*self.classes, VOID_ROW]:
            counts = [self.counts[s].get(c, "") for s in SPLITS] if c != VOID_ROW else ["", ""]
            style = "bold red" if c in self.absent else None
            t.add_row(Text(c), f"{train[c]:.1%}", f"{valid[c]:.1%}", *map(str, counts), style=style)
        t.add_row(
            "total",
            f"{sum(self.pixels['train'].values()):,}",
            f"{sum(self.pixels['valid'].values()):,}",
            str(self.images.get("train", 0)),
            str(self.images.get("valid", 0)),
            style="bold",
        )
        return t

    def checked_line(self) -> str:
        return f"checked {self.files} images and {self.masks} masks in {self.seconds:.1f} s"
