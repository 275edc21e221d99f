"""How a segmentation folder's pairs are split into training and validation.

In this order (`snugfit.data.seg_items.folder_pairs`): the images a validation list
names (``valid.txt``, VOC's ``ImageSets/Segmentation/val.txt``; `split_by_list`);
the split folders the images come in (``images/training/`` and
``images/validation/``, ADE20K's and many Kaggle sets' layout; `split_by_folders`);
a seeded random split (`split_pairs`).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from snugfit.data.items import split_random
from snugfit.data.seg_layouts import Folders
from snugfit.errors import SnugfitError, first_line

Pair = tuple[Path, Path]


def text_lines(path: Path, what: str) -> list[str]:
    """A text file's lines (a BOM dropped); one line naming ``what`` when unreadable."""
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise SnugfitError(f"{path}: cannot read the {what} ({first_line(e)})") from None


def relative_name(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _valid_names(path: Path) -> list[tuple[int, str]]:
    """``(line number, name)`` of each name in a valid.txt (blank lines and # skipped)."""
    lines = text_lines(path, "validation names")
    return [(n, s.strip()) for n, s in enumerate(lines, 1) if s.strip() and not s.startswith("#")]


def split_by_list(
    pairs: list[Pair], no_mask: list[Path], images_dir: Path, valid_file: Path
) -> tuple[list[Pair], list[Pair], list[tuple[int, str]]]:
    """Pairs whose image valid.txt names (its path under images/, or its file name, with
    or without the suffix: VOC's lists name ``2007_000033``), the others, and the lines
    naming no image at all. A listed image without a mask is reported as such already."""

    def index_of(images: list[Path]) -> dict[str, int]:
        index: dict[str, int] = {}
        for i, image in enumerate(images):
            index[relative_name(image, images_dir)] = i
            index.setdefault(image.name, i)
            index.setdefault(relative_name(image.with_suffix(""), images_dir), i)
        return index

    index, maskless = index_of([image for image, _ in pairs]), index_of(no_mask)
    chosen, unknown = set(), []
    for n, name in _valid_names(valid_file):
        key = name.replace("\\", "/").removeprefix(f"{images_dir.name}/")
        if key in index:
            chosen.add(index[key])
        elif key not in maskless:
            unknown.append((n, name))
    if not chosen:
        raise SnugfitError(
            f"{valid_file}: names no image with a mask in {images_dir}"
            + (f" (line {unknown[0][0]}: {unknown[0][1]!r})" if unknown else "")
        )
    train = [p for i, p in enumerate(pairs) if i not in chosen]
    return train, [p for i, p in enumerate(pairs) if i in chosen], unknown


def unknown_valid_reason(line: int, name: str, folders: Folders) -> str:
    """Why a validation list's line is ignored (`SegmentationItems.unknown_valid`)."""
    return f"line {line} names {name!r}: no such image in {folders.images}/"


def split_pairs(pairs: list[Pair], valid_pct: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """A seeded random split of ``pairs`` (`split_random`: the same for the same seed)."""
    train_idx, valid_idx = split_random(len(pairs), valid_pct, seed)
    return [pairs[i] for i in train_idx], [pairs[i] for i in valid_idx]


# Names of split folders (any case), as datasets ship them.
TRAIN_NAMES = ("train", "training")
VALID_NAMES = ("val", "valid", "validation")
TEST_NAMES = ("test", "testing")


class FolderSplit(NamedTuple):
    """`split_by_folders`' split."""

    train: list[Pair]
    valid: list[Pair]
    valid_folder: str  # the validation folder's name under the images' (``validation``)
    held_out: list[tuple[Path, int]]  # test folders' pairs, neither trained nor validated


def split_folder(image: Path, images_dir: Path) -> str:
    """The folder right under ``images_dir`` that ``image`` is in ("" for none)."""
    parts = relative_name(image, images_dir).split("/")
    return parts[0] if len(parts) > 1 else ""


def split_by_folders(pairs: list[Pair], images_dir: Path) -> FolderSplit | None:
    """When ``images_dir`` holds a training and a validation folder (`TRAIN_NAMES`,
    `VALID_NAMES`): the pairs of the validation folder validate, those of a test
    folder (`TEST_NAMES`) are held out, with their count, and the others train.
    None when there are no such folders."""
    folder_of = [split_folder(image, images_dir) for image, _ in pairs]
    names = sorted(set(folder_of))
    valid = next((n for n in names if n.lower() in VALID_NAMES), None)
    if valid is None or not any(n.lower() in TRAIN_NAMES for n in names):
        return None
    train, valid_pairs, tests = [], [], {}
    for pair, folder in zip(pairs, folder_of, strict=True):
        if folder == valid:
            valid_pairs.append(pair)
        elif folder.lower() in TEST_NAMES:
            tests[folder] = tests.get(folder, 0) + 1
        else:
            train.append(pair)
    held_out = [(images_dir / name, n) for name, n in sorted(tests.items())]
    return FolderSplit(train, valid_pairs, valid, held_out)
