"""Masks given as run-length encodings in a CSV, as Kaggle's segmentation datasets
ship them, decoded once into mask files that the segmentation folder reads.

The CSV sits in the data folder; one column holds the encodings (named
``EncodedPixels``, ``rle_mask``, ``rle`` or ``encoding``: pairs of a 1-based start and
a length), one names the image, and the class is a column (``ClassId``, ``class``)
or the image column's last word (Understanding Clouds' ``0011165.jpg_Fish``); without
either, the masks are binary. The images are the folder beside the CSV holding the
named files (``train_images/``, ``train/``, ``train_v2/``); a name may lack its
extension. Layouts as they are downloaded:

* Carvana: ``train_masks.csv`` (``img``, ``rle_mask``) and ``train/``;
* Airbus ship detection: ``train_ship_segmentations_v2.csv`` (``ImageId``,
  ``EncodedPixels``, one row per ship, an empty cell for none) and ``train_v2/``;
* Severstal steel defects: ``train.csv`` (``ImageId``, ``ClassId``, ``EncodedPixels``)
  and ``train_images/``;
* Understanding Clouds: ``train.csv`` (``Image_Label``, ``EncodedPixels``) and
  ``train_images/`` (1400x2100).

Pixels are numbered either down each column (most sets: "top to bottom, then left
to right") or along each row (Carvana). The order is read from the masks: decoded
the wrong way, a region falls apart into stripes, so the order whose sampled masks
have the fewer edges is taken, and the check names it.

A mask holds class indices (0: background; the classes in sorted order from 1) and
is written to the cache (`snugfit.data.cache.cache_dir`), keyed by the CSV's path,
size and time, beside what the decoding found (``rle.json``: the classes, the bad
rows). Rows that cannot be read (an encoding that is not one, runs past the image,
an image that does not exist) are kept as problems for the check, and a pixel two
classes claim takes the later row's class (masks of one class per pixel); the check
counts such pixels.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from snugfit.data.walk import IMAGE_EXTENSIONS, named_files
from snugfit.errors import SnugfitError

RLE_COLUMNS = ("encodedpixels", "rle_mask", "rle", "encoding", "encodings")
CLASS_COLUMNS = ("classid", "class_id", "class", "classname", "class_name")
BACKGROUND, FOREGROUND = "background", "foreground"
DONE, MASKS = "rle.json", "masks"
SAMPLED = 20  # masks decoded both ways to find the pixel order
WORKERS = 4  # processes decoding the masks, at most
FORMAT = 2  # part of the cache key: bump when the written masks change (2: unlisted)
_DIGITS = re.compile(r"[0-9\s]*")
_LABELLED = re.compile(r"^(.+\.[A-Za-z]{3,4})_([^_.]+)$")  # image.jpg_Fish


class RleCsv(NamedTuple):
    """A CSV of run-length masks and the folder of the images it names."""

    csv: Path
    images: str  # the images' folder under the data folder ("." for the data folder)
    image_col: str
    rle_col: str
    class_col: str | None  # a column naming each row's class
    label_in_name: bool  # the class is the image column's last word (image.jpg_Fish)


class Row(NamedTuple):
    line: int  # the CSV line, 1 being the header
    image: str  # the image's file name as the CSV gives it
    label: str | None  # its class; None: binary masks
    rle: str


def find(root: str | os.PathLike) -> RleCsv | None:
    """The run-length CSV of the data folder ``root`` (the module docstring), found from
    the CSVs' headers and first rows; None: none."""
    root = Path(root)
    if not root.is_dir():
        return None
    for path in sorted(root.glob("*.csv")):
        found = _table(root, path)
        if found is not None:
            return found
    return None


def _table(root: Path, path: Path) -> RleCsv | None:
    try:
        with path.open(newline="") as f:
            reader = csv.reader(f)
            header = next(reader, [])
            first = [row for _, row in zip(range(50), reader, strict=False)]
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    lower = [h.strip().lower() for h in header]
    rle = next((header[lower.index(c)] for c in RLE_COLUMNS if c in lower), None)
    if rle is None or not any(
        _is_rle(r[lower.index(rle.lower())]) for r in first if len(r) == len(header)
    ):
        return None
    label = next((header[lower.index(c)] for c in CLASS_COLUMNS if c in lower), None)
    for name in header:
        if name in (rle, label):
            continue
        values = [r[header.index(name)] for r in first if len(r) == len(header)][:5]
        in_name = bool(values) and all(_LABELLED.match(v) for v in values)
        files = [_LABELLED.match(v).group(1) if in_name else v for v in values]
        folder = _images_folder(root, files)
        if folder is not None:
            return RleCsv(path, folder, name, rle, None if in_name else label, in_name)
    return None


def _is_rle(cell: str) -> bool:
    words = cell.split()
    return len(words) >= 2 and len(words) % 2 == 0 and bool(_DIGITS.fullmatch(cell))


def _images_folder(root: Path, files: list[str]) -> str | None:
    """The folder beside the CSV (or the data folder) holding most of the first named
    images."""
    if not files:
        return None
    folders = sorted(
        (d for d in root.iterdir() if d.is_dir()), key=lambda d: "train" not in d.name.lower()
    )
    for folder in [*folders, root]:  # most of them: a row may name a missing image
        _, missing, _ = named_files([folder / n for n in files], list(range(len(files))))
        if 2 * (len(files) - len(missing)) > len(files):
            return "." if folder == root else folder.name
    return None


def rows(table: RleCsv) -> Iterator[Row]:
    """The CSV's rows with an encoding or an empty cell (an image without that class)."""
    with table.csv.open(newline="") as f:
        for line, r in enumerate(csv.DictReader(f), start=2):
            name = (r.get(table.image_col) or "").strip()
            label = None
            if table.label_in_name:
                m = _LABELLED.match(name)
                name, label = (m.group(1), m.group(2)) if m else (name, None)
            elif table.class_col is not None:
                label = (r.get(table.class_col) or "").strip()
            yield Row(line, name, label, (r.get(table.rle_col) or "").strip())


def decode(rle: str, height: int, width: int, column_major: bool) -> np.ndarray:
    """The boolean ``(height, width)`` mask of an encoding (pairs of a 1-based start
    and a length, numbered down each column when ``column_major``, else along rows).

    >>> decode("1 2 6 1", 2, 3, column_major=True).astype(int).tolist()
    [[1, 0, 0], [1, 0, 1]]
    >>> decode("1 2 6 1", 2, 3, column_major=False).astype(int).tolist()
    [[1, 1, 0], [0, 0, 1]]

    Raises:
        ValueError: Not pairs of whole numbers, a run before pixel 1 or past the last.
    """
    flat = decode_flat(rle, height * width, f"{width}x{height}")
    return _shaped(flat, height, width, column_major)


def _shaped(flat: np.ndarray, height: int, width: int, column_major: bool) -> np.ndarray:
    return flat.reshape(width, height).T if column_major else flat.reshape(height, width)


def decode_flat(rle: str, n: int, size: str) -> np.ndarray:
    """The ``n`` pixels of an encoding, in its order (`decode`); ``size`` names the
    image in the error."""
    words = rle.split()
    if len(words) % 2 or not _DIGITS.fullmatch(rle):
        raise ValueError("not a run-length encoding (pairs of a start and a length)")
    numbers = np.asarray(words, dtype=np.int64)
    starts, lengths = numbers[0::2] - 1, numbers[1::2]
    ends = starts + lengths
    if len(starts) and (starts.min() < 0 or ends.max() > n):
        raise ValueError(f"runs past the image's {size} pixels")
    if len(starts) and (starts[1:] < ends[:-1]).any():  # out of order, or overlapping
        steps = np.zeros(n + 1, dtype=np.int32)
        np.add.at(steps, starts, 1)
        np.add.at(steps, ends, -1)
        return np.cumsum(steps[:-1]) > 0
    counts = np.empty(2 * len(starts) + 1, dtype=np.int64)  # gaps and runs, repeated
    counts[0:-1:2] = starts - np.concatenate([[0], ends[:-1]])
    counts[1::2] = lengths
    counts[-1] = n - (ends[-1] if len(ends) else 0)
    return np.repeat(np.arange(len(counts)) % 2 == 1, counts)


def encode(mask: np.ndarray, column_major: bool = True) -> str:
    """The encoding of a boolean ``(height, width)`` mask (`decode`'s inverse): 1-based
    starts and lengths, down each column by default (Kaggle's usual order).

    >>> encode(np.array([[1, 0, 0], [1, 0, 1]], bool))
    '1 2 6 1'
    >>> encode(np.array([[1, 0, 0], [1, 0, 1]], bool), column_major=False)
    '1 1 4 1 6 1'
    """
    flat = (mask.T if column_major else mask).reshape(-1).astype(np.int8)
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [0]])))
    starts, ends = changes[0::2], changes[1::2]
    return " ".join(f"{s + 1} {e - s}" for s, e in zip(starts.tolist(), ends.tolist(), strict=True))


def edges(mask: np.ndarray) -> int:
    """Neighbouring pixels that differ: few for regions, many for stripes."""
    return int((mask[1:] != mask[:-1]).sum() + (mask[:, 1:] != mask[:, :-1]).sum())


class Decoded(NamedTuple):
    """The masks decoded from a `RleCsv`, and what the decoding found."""

    folder: Path  # the cache entry: masks/<image name>.png and rle.json (the rest)
    column_major: bool
    vocab: list[str]
    masks: int  # masks written
    problems: list[tuple[int, str, str]]  # (CSV line, image name, why the row is not used)
    overlap: int  # pixels two classes claimed (the later row's class kept)
    unlisted: int = 0  # images without a row, read as background (`_unlisted`)

    @property
    def order(self) -> str:
        return "column by column" if self.column_major else "row by row"


def decoded(root: Path, table: RleCsv, console=None) -> Decoded:
    """The masks of ``table``, decoded into the cache the first time (with a progress
    bar on ``console``'s terminal), read back from it after."""
    from snugfit.data.cache import cache_dir

    stat = table.csv.stat()
    key = f"{table.csv.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{FORMAT}"
    out = cache_dir() / "rle" / hashlib.sha1(key.encode()).hexdigest()[:16]
    if (out / DONE).is_file():
        return _read_done(out)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    try:
        (tmp / MASKS).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SnugfitError(
            f"{tmp.parent}: cannot write the masks decoded from {table.csv} ({e.strerror}); "
            "set SNUGFIT_CACHE to a writable folder"
        ) from None
    try:
        result = _decode_all(root, table, tmp, console)
    except BaseException:  # Ctrl-C, a full disk: no half-written entry is left
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    done = {
        "column_major": result.column_major, "vocab": result.vocab, "masks": result.masks,
        "problems": result.problems, "overlap": result.overlap, "unlisted": result.unlisted,
    }  # fmt: skip
    (tmp / DONE).write_text(json.dumps(done))
    try:
        tmp.rename(out)
    except OSError:  # another process wrote it first: the same masks
        shutil.rmtree(tmp, ignore_errors=True)
    return _read_done(out)


def _read_done(folder: Path) -> Decoded:
    done = json.loads((folder / DONE).read_text())
    problems = [tuple(p) for p in done["problems"]]
    return Decoded(folder, done["column_major"], done["vocab"], done["masks"], problems,
                   done["overlap"], done["unlisted"])  # fmt: skip


def _decode_all(root: Path, table: RleCsv, out: Path, console) -> Decoded:
    from rich.console import Console

    from snugfit.data.progress import progress

    images_dir = root / table.images
    by_image: dict[str, list[Row]] = {}
    for row in rows(table):
        by_image.setdefault(row.image, []).append(row)
    vocab = _vocab(r.label for group in by_image.values() for r in group)
    value = {name: i for i, name in enumerate(vocab)}
    problems = [(r.line, "", "no image name") for r in by_image.pop("", [])]
    names = list(by_image)  # a name without its extension: the one image file of it
    paths, missing, _ = named_files([images_dir / n for n in names], list(range(len(names))))
    lost = {names[k] for _, k, _ in missing}
    for name in lost:
        problems += [(r.line, name, f"no such image in {table.images}/") for r in by_image[name]]
    files = {n: path for n, path in zip(names, paths, strict=True) if n not in lost}
    column_major = _column_major(files, by_image)
    unlisted = _unlisted(images_dir, files, by_image)
    jobs = [
        (path, out / MASKS / path.relative_to(images_dir).with_suffix(".png"),
         by_image.get(name, []), value, column_major)
        for name, path in [*files.items(), *((p.name, p) for p in unlisted)]
    ]  # fmt: skip
    written = overlap = 0
    with (
        progress(
            console or Console(stderr=True), len(jobs), f"decoding {table.csv.name}"
        ) as advance,
        _pool(len(jobs)) as pool,
    ):
        for bad, claimed in (
            pool.map(_write_mask, jobs, chunksize=16) if pool else map(_write_mask, jobs)
        ):
            problems += bad
            overlap += claimed
            written += not bad
            advance(1)
    return Decoded(out, column_major, vocab, written, sorted(problems), overlap, len(unlisted))


def _unlisted(images_dir: Path, files: dict[str, Path], by_image: dict) -> list[Path]:
    """The images of the folder without a row, when the CSV lists only masks (no row has
    an empty cell, as Severstal's lists only the defects: its other images have none);
    none when the CSV gives empty cells for images without a mask (Airbus, Clouds),
    where an image without a row is one without a mask."""
    if any(not r.rle for group in by_image.values() for r in group):
        return []
    listed = set(files.values())
    found = (p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    return sorted(p for p in found if p not in listed and not p.name.startswith("."))


def _pool(n_jobs: int):
    """Processes for many masks (each takes tens of ms at 1400x2100); none for a few."""
    from concurrent.futures import ProcessPoolExecutor
    from contextlib import nullcontext

    workers = min(WORKERS, os.cpu_count() or 1)
    if n_jobs < 64 or workers < 2:
        return nullcontext(None)
    return ProcessPoolExecutor(workers)


def _write_mask(job) -> tuple[list[tuple[int, str, str]], int]:
    """Decode one image's rows and write its mask (unless a row is bad): the bad rows
    and the pixels a second class claimed."""
    path, target, group, value, column_major = job
    mask, bad, claimed = _mask(path, group, value, column_major)
    if not bad:
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(target, compress_level=1)
    return bad, claimed


def _vocab(labels) -> list[str]:
    """background, then the classes in order (numbers by value); binary: foreground."""
    found = {label for label in labels if label}
    if not found:
        return [BACKGROUND, FOREGROUND]
    numbers = all(label.isdigit() for label in found)
    return [BACKGROUND, *map(_label_name, sorted(found, key=int if numbers else None))]


def _mask(path: Path, group: list[Row], value: dict, column_major: bool):
    """The class-index mask of one image's rows, the rows that could not be read, and
    the pixels a second class claimed."""
    with Image.open(path) as img:
        width, height = img.size
    flat = np.zeros(height * width, dtype=np.uint8)  # in the CSV's pixel order
    bad, claimed = [], 0
    for row in group:
        if not row.rle:
            continue
        if row.label == "":  # a class column left empty beside an encoding
            bad.append((row.line, row.image, "no class for its encoding"))
            continue
        try:
            region = decode_flat(row.rle, height * width, f"{width}x{height}")
        except ValueError as e:
            bad.append((row.line, row.image, str(e)))
            continue
        k = value[_label_name(row.label)] if row.label else 1
        before = flat[region]
        claimed += int(np.count_nonzero((before != 0) & (before != k)))
        np.putmask(flat, region, np.uint8(k))
    return np.ascontiguousarray(_shaped(flat, height, width, column_major)), bad, claimed


def _label_name(label: str) -> str:
    return f"class_{int(label)}" if label.isdigit() else label


def _column_major(files: dict[str, Path], by_image: dict[str, list[Row]]) -> bool:
    """Whether the sampled masks have fewer edges decoded down the columns (the module
    docstring); True when nothing tells (Kaggle's usual order)."""
    counts = {True: 0, False: 0}
    sampled = 0
    for name, path in files.items():
        cells = [r.rle for r in by_image[name] if r.rle]
        if not cells:
            continue
        with Image.open(path) as img:
            width, height = img.size
        try:  # the same pixels in the CSV's order, shaped either way
            flat = np.logical_or.reduce([decode_flat(c, height * width, "") for c in cells])
        except ValueError:
            continue
        for order in counts:
            counts[order] += edges(_shaped(flat, height, width, order))
        sampled += 1
        if sampled == SAMPLED:
            break
    return counts[True] <= counts[False]


def describe(table: RleCsv, found: Decoded) -> str:
    """How the check names the layout: the images, the CSV, the order, the overlaps."""
    notes = [found.order]
    if found.overlap:
        notes.append(f"{found.overlap} pixels in two classes, the later row's kept")
    if found.unlisted:
        notes.append(f"{found.unlisted} images without a row read as background: the CSV "
                     "lists only masks")  # fmt: skip
    return f"{table.images}/ and the run-length masks of {table.csv.name} ({'; '.join(notes)})"


def check_not_masks(path: Path, cells: list[str]) -> None:
    """A classifier's CSV (``--csv``) whose label cells hold run-length masks: one line
    saying how to read them as masks.

    Raises:
        SnugfitError: Most of the first 50 non-empty cells are encodings.
    """
    values = [c for c in cells[:200] if c][:50]
    if values and sum(_is_rle(v) for v in values) > len(values) // 2:
        raise SnugfitError(
            f"{path}: its label column holds run-length masks (pairs of a start and a "
            "length), not classes: to segment, leave out --csv; the data folder's CSV of "
            "masks is found and decoded"
        )


def masks_of(found: Decoded) -> Path:
    """The folder of the decoded masks."""
    return found.folder / MASKS


def decoded_into(masks: Path) -> Decoded:
    """What the decoding into the folder ``masks`` (`masks_of`) found: the classes, the
    rows not used, ..."""
    return _read_done(masks.parent)
