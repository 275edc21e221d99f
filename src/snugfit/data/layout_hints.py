"""When a folder's subfolders are no classes, and where DATA should point instead.

Class-folder datasets are read from the folder holding ``train/`` (or the class
folders themselves). Datasets as downloaded often sit one or two levels deeper, or
are laid out otherwise, and reading their top folders as classes would train a
model of "seg_train" against "seg_test" (Intel's scenes), or of "images" against
"annotations" (the Oxford pets). `check_classes` refuses those in one line that says
what to do: the folder below to point DATA at, or ``--label-re`` when the names of
the images hold their class.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from snugfit.data.name_labels import suggest_label_re
from snugfit.data.seg_layouts import says_masks
from snugfit.data.walk import is_image
from snugfit.errors import SnugfitError

SPLIT_WORDS = frozenset({"train", "training", "test", "testing", "val", "valid", "validation",
                         "pred", "prediction", "dev", "eval"})  # fmt: skip
# Folders of a dataset's images and their annotations: no classes.
PART_NAMES = frozenset({"images", "image", "imgs", "img", "masks", "mask", "labels", "label",
                        "annotations", "annotation", "ann", "anns", "gt", "groundtruth",
                        "ground_truth", "jpegimages", "segmentationclass", "segmentationclassaug",
                        "segmentationobject", "trimaps", "xmls"})  # fmt: skip


def check_classes(path: Path, train_dir: Path, classes: list[str]) -> None:
    """Raise when ``train_dir``'s folders ``classes`` (read from ``path``) are no
    classes to train: one only, or, read from ``path`` itself, all named like splits
    or like a dataset's parts."""
    if len(classes) < 2:
        raise SnugfitError(
            f"{path}: found only one class ('{classes[0]}'); need at least two{layout_hint(path)}"
        )
    if train_dir != path:
        return
    if all(split_like(c) for c in classes):
        raise SnugfitError(
            f"{path}: its folders {', '.join(classes)} look like splits, not classes"
            f"{layout_hint(path) or '; point DATA at a folder of class folders'}"
        )
    if all(c.lower() in PART_NAMES for c in classes):
        raise SnugfitError(
            f"{path}: its folders {', '.join(classes)} look like a dataset's images and "
            f"annotations, not classes{_parts_hint(path, classes)}"
        )


def split_like(name: str) -> bool:
    """Whether a folder name names a split (``test``, Intel's ``seg_train``), not a class."""
    return any(w in SPLIT_WORDS for w in re.split(r"[^a-z]+", name.lower()))


def layout_hint(path: Path, depth: int = 3) -> str:
    """ "; point DATA at X ..." naming the folder below ``path`` (up to ``depth`` levels,
    hidden ones and macOS's ``__MACOSX`` aside) that holds ``train/``, or else one
    that holds two class folders or more under a split-like name, training's first
    (Intel's ``seg_train/seg_train/<class>``); "" when there is none."""
    level = [path]
    for _ in range(depth):
        below = []
        for d in level:
            with contextlib.suppress(OSError):
                below += sorted(c for c in d.iterdir() if c.is_dir() and c.name[0] not in "._")
        for d in below:
            if (d / "train").is_dir():
                return f"; point DATA at {d} (it holds train/)"
        found = [
            d for d in below if split_like(d.name) and sum(c.is_dir() for c in d.iterdir()) > 1
        ]
        found.sort(key=lambda d: "train" not in d.name.lower())  # the training split first
        if found:
            return f"; point DATA at {found[0]} (its folders look like classes)"
        level = below
    return ""


def _parts_hint(path: Path, parts: list[str]) -> str:
    """What to do with images and annotations: ``--label-re`` on the images' folder
    when their names hold the class (the Oxford pets), and ``--masks`` naming a folder
    of masks among the annotations (the pets' ``trimaps/``); else the segmentation
    layout."""
    masks = _masks_among(path, parts)
    segment = f"; or, to segment, --masks {masks}" if masks else ""
    for name in parts:
        folder = path / name
        if name.lower() in ("images", "image", "imgs", "img", "jpegimages"):
            files = sorted(f for f in folder.iterdir() if f.is_file() and is_image(f))
            guess = suggest_label_re(files)
            if guess:
                return (f"; their names hold the class: DATA {folder} with --label-re "
                        f"'{guess}'{segment}")  # fmt: skip
    return segment or (
        "; a segmentation folder has images/ and masks/ (or PASCAL VOC's JPEGImages/ and "
        "SegmentationClass/), or name them with --images and --masks"
    )


def _masks_among(path: Path, parts: list[str]) -> str | None:
    """A folder one level into ``parts`` named like masks (``annotations/trimaps``)
    that holds images, as ``--masks`` takes it; None: none."""
    for name in parts:
        for sub in sorted(d for d in (path / name).iterdir() if d.is_dir()):
            if says_masks(sub.name) and any(map(is_image, sub.iterdir())):
                return f"{name}/{sub.name}"
    return None
