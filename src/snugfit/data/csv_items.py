"""A CSV dataset's items: one row per image, its file and its label(s).

`csv_items` reads the rows of ``ImageDataLoaders.from_csv`` (and ``snugfit train
--csv``): the file and label columns, an optional validation column, single-label
cells or multi-label ones (``label_delim``). Files are not opened: a file listed
but missing, and a single-label row without a label, are returned with their line
in the CSV for the caller to report (`snugfit.data.check.check_csv`) or skip.

Many Kaggle CSVs name their images without the extension (APTOS's ``000c1434d8d7``
for ``train_images/000c1434d8d7.png``, HAM10000's ``ISIC_0027419``, Planet's
``train_0``). fastai wants ``suffix='.png'`` for them; here a listed name that is no
file, and has no image extension, is the one image file of that name plus an image
extension, and the check says how many were found so.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from snugfit.data import rle
from snugfit.data.items import labelled, labelled_multi, split_items, split_labels
from snugfit.data.walk import named_files
from snugfit.errors import SnugfitError

logger = logging.getLogger("snugfit")


class CsvItems(NamedTuple):
    """What `csv_items` found: the split items, and the rows naming missing files."""

    train: list[tuple[Path, Any]]  # (file, class index), or (file, tuple of indices)
    valid: list[tuple[Path, Any]]
    vocab: list[str]
    multi_label: bool
    csv_path: Path
    valid_pct: float | None  # the random split's fraction (None with a valid column)
    # (file, CSV line, note) of listed files that do not exist; the note names the
    # files of that name with an extension when there are several ("" otherwise)
    missing: list[tuple[Path, int, str]]
    unlabelled: list[tuple[Path, int]]  # (file, CSV line) of single-label rows with no label
    list_delim: str | None = None  # single-label cells that look like lists split by it
    # names listed without their extension, found with one: (extension, count), most first
    found_as: tuple[tuple[str, int], ...] = ()


# What separates the labels of a list in a CSV cell, in the order they are tried.
LIST_DELIMITERS = (",", ";", "|", " ")


def list_delimiter(vocab: list[str]) -> str | None:
    """The delimiter that makes single-label classes look like lists of labels, or None.

    Labels such as ``leaf,sky``, ``sky`` and ``sky,ant`` are multi-label rows read
    without ``label_delim``: each combination is learnt as a class of its own. They
    are taken for lists when some class holds the delimiter and splitting every class
    by it leaves fewer than half as many distinct parts as classes (parts recur
    across combinations). Single-label names with spaces ("golden retriever",
    "labrador retriever") leave more parts than classes.

    >>> list_delimiter(["leaf,sky", "sky", "sky,ant", "ant,leaf", "leaf", "ant,sky,leaf", "ant"])
    ','
    >>> list_delimiter(["golden retriever", "labrador retriever", "pug"]) is None
    True
    """
    for delim in LIST_DELIMITERS:
        if not any(delim in c.strip() for c in vocab):
            continue
        parts = {part for c in vocab for part in split_labels(c, delim)}
        if len(parts) < len(vocab) / 2:
            return delim
    return None


def list_hint(vocab: list[str], delim: str) -> str:
    """The line saying that ``vocab`` looks like lists split by ``delim``."""
    lists = [c for c in vocab if delim in c.strip()]
    return (
        f"labels look like lists: {len(lists)} of {len(vocab)} classes hold {delim!r} (e.g. "
        f"{lists[0]!r}), each learnt as a class of its own; for multi-label data pass "
        f"--label-delim {delim!r} (label_delim= in Python)"
    )


def csv_items(
    path: Path,
    csv_fname: str | os.PathLike,
    folder: str | None,
    fn_col: int | str,
    label_col: int | str,
    valid_col: int | str | None,
    valid_pct: float,
    header: bool,
    seed: int,
    label_delim: str | None,
    suffix: str = "",
) -> CsvItems:
    """The split items of a CSV dataset (the arguments of `ImageDataLoaders.from_csv`).

    ``suffix`` is appended to every listed name (fastai's); a name that is then no
    file and has no image extension is read as the one image file of that name plus
    an extension (``found_as`` counts them). Files are not opened, and files listed
    but missing stay among the items (``missing`` names them with their line): the
    caller reports or skips them.
    A single-label row whose label cell is empty is no item (a class named ""
    would be learnt): ``unlabelled`` names it with its line, for the caller to
    report. In a multi-label CSV an empty cell is an image with no label.

    Raises:
        SnugfitError: Missing folder or CSV, no rows, a bad column or value, no
            labels (multi-label) or a single class (single-label).
    """
    if not path.is_dir():
        raise SnugfitError(f"{path}: no such directory")
    csv_path = path / csv_fname
    names, rows = _read_csv(csv_path, header)
    cols = [
        _column(names, c, a, csv_path) for c, a in ((fn_col, "fn_col"), (label_col, "label_col"))
    ]
    cols.append(_column(names, valid_col, "valid_col", csv_path) if valid_col is not None else None)
    image_dir = path / folder if folder else path
    files, cells, is_valid, lines = _csv_rows(rows, cols, image_dir, csv_path, suffix)
    multi = label_delim is not None
    unlabelled = [] if multi else [(files[i], lines[i]) for i, c in enumerate(cells) if not c]
    if unlabelled:  # no item: a class named "" would be learnt
        kept = [i for i, c in enumerate(cells) if c]
        files, cells, lines = ([x[i] for i in kept] for x in (files, cells, lines))
        is_valid = [is_valid[i] for i in kept] if is_valid else is_valid
    if not files:
        raise SnugfitError(f"{csv_path}: no labels found (every label cell is empty)")
    files, missing, found_as = named_files(files, lines)
    vocab, labels = _csv_labels(files, cells, label_delim, csv_path)
    found = (vocab, multi, csv_path)
    rest = (missing, unlabelled, None if multi else list_delimiter(vocab), found_as)
    if valid_col is None:
        train_items, valid_items = split_items(files, labels, valid_pct, seed)
        return CsvItems(train_items, valid_items, *found, valid_pct, *rest)
    items = list(zip(files, labels, strict=True))
    train_items = [it for it, v in zip(items, is_valid, strict=True) if not v]
    valid_items = [it for it, v in zip(items, is_valid, strict=True) if v]
    return CsvItems(train_items, valid_items, *found, None, *rest)


def warn_csv_items(found: CsvItems, known: Mapping[str, str]) -> None:
    """What the loaders say of a CSV's items: raise on files listed but missing (not
    in ``known``, the check's unreadable and missing files, which training skips);
    log the names found with an extension, the rows without a label, labels that
    look like lists.

    Raises:
        SnugfitError: A listed file that is missing and not in ``known``.
    """
    missing = [(f, note) for f, _, note in found.missing if str(f) not in known]
    if missing:
        n_files = len(found.train) + len(found.valid)
        f, note = missing[0]
        raise SnugfitError(
            f"{f}: listed in {found.csv_path} but not found{f' ({note})' if note else ''} "
            f"({len(missing)} of {n_files} files missing)"
        )
    if found.found_as:
        logger.info(
            "%s: file names listed without their extension found: %s", found.csv_path,
            ", ".join(f"{n} as {ext}" for ext, n in found.found_as),
        )  # fmt: skip
    if found.unlabelled:
        f, n = found.unlabelled[0]
        logger.warning(
            "%s: %d row(s) with an empty label cell, skipped (e.g. line %d: %s)",
            found.csv_path, len(found.unlabelled), n, f,
        )  # fmt: skip
    if found.list_delim is not None:
        logger.warning("%s: %s", found.csv_path, list_hint(found.vocab, found.list_delim))


def _read_csv(csv_path: Path, header: bool) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The column names (empty without ``header``) and the non-blank rows of a CSV file,
    each with its line number in the file (blank lines counted)."""
    if not csv_path.is_file():
        raise SnugfitError(f"{csv_path}: no such file")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            rows = [(reader.line_num, r) for r in reader if any(cell.strip() for cell in r)]
    except (UnicodeDecodeError, csv.Error) as e:
        raise SnugfitError(f"{csv_path}: not a readable CSV file ({e})") from None
    names = rows.pop(0)[1] if header and rows else []
    if not rows:
        raise SnugfitError(f"{csv_path}: no rows")
    return names, rows


def _column(names: list[str], col: int | str, arg: str, csv_path: Path) -> int:
    """The index of column ``col`` (an index, or a header name)."""
    if isinstance(col, str):
        stripped = [n.strip() for n in names]
        if col not in stripped:
            raise SnugfitError(f"{arg}: no column {col!r} in {csv_path} (columns: {stripped})")
        return stripped.index(col)
    return col


def _csv_rows(
    rows: list[tuple[int, list[str]]],
    cols: list[int | None],
    image_dir: Path,
    csv_path: Path,
    suffix: str,
) -> tuple[list[Path], list[str], list[bool], list[int]]:
    """Each row's file (``suffix`` appended), label cell, validation flag and line."""
    fn_i, lab_i, valid_i = cols
    needed = max(i for i in cols if i is not None)
    files, cells, is_valid, lines = [], [], [], []
    for n, row in rows:
        if len(row) <= needed:
            raise SnugfitError(
                f"{csv_path}, line {n}: expected {needed + 1} columns, got {len(row)}"
            )
        files.append(image_dir / (row[fn_i].strip() + suffix))
        lines.append(n)
        cells.append(row[lab_i].strip())
        if valid_i is not None:
            flag = _parse_bool(row[valid_i])
            if flag is None:
                raise SnugfitError(
                    f"{csv_path}, line {n}: valid column value {row[valid_i]!r} is not a boolean"
                )
            is_valid.append(flag)
    return files, cells, is_valid, lines


def _csv_labels(
    files: list[Path], cells: list[str], label_delim: str | None, csv_path: Path
) -> tuple[list[str], list[int] | list[tuple[int, ...]]]:
    """The vocabulary and each row's label: a class index, or a tuple of them (``label_delim``)."""
    rle.check_not_masks(csv_path, cells)
    if label_delim is not None:
        if not label_delim:
            raise SnugfitError("label_delim: must be a non-empty string or None")
        vocab, labels = labelled_multi([split_labels(c, label_delim) for c in cells])
        if not vocab:
            raise SnugfitError(f"{csv_path}: no labels found (every label cell is empty)")
        return vocab, labels
    vocab, labels = labelled(files, cells)
    if len(vocab) < 2:
        raise SnugfitError(f"{csv_path}: found only one class ('{vocab[0]}'); need at least two")
    return vocab, labels


def _parse_bool(value: str) -> bool | None:
    v = value.strip().lower()
    if v in ("1", "true", "t", "yes", "y", "valid", "1.0"):
        return True
    if v in ("0", "false", "f", "no", "n", "train", "0.0", ""):
        return False
    return None
