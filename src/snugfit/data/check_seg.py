"""Check a segmentation folder before training: pairs, classes, pixel shares, problems.

`check_segmentation` reads a folder as `SegmentationDataLoaders.from_folder` does
(`snugfit.data.seg_items`: the same pairs, classes and split) and fully decodes every
image and mask, in threads. It reports, each problem naming its file:

* images without a mask, and masks without an image;
* unreadable images or masks, with the reason training would give;
* masks that are not 8-bit class indices (colour (RGB), 16-bit, with alpha);
* an image and its mask of different sizes;
* mask values that are neither a class (per codes.txt, when given) nor 255;
* the pixel share of each class (and void) per split, and the images holding it;
* classes absent from the training masks (warned about: they never learn);
* links to folders not followed (`snugfit.data.walk`): a loop, or a second way to
  a folder already read.

The report (`snugfit.data.check_seg_report.SegmentationCheckReport`) keeps the split
and the classes, so `SegmentationDataLoaders.from_check` builds the loaders with no
second split and no second pass over the files. No readable pair, an empty training
or validation set, or fewer than two classes raise `SnugfitError`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
from rich.console import Console

from snugfit.data.check_report import NotImage
from snugfit.data.check_seg_report import SPLITS, VOID_ROW, PairProblem, SegmentationCheckReport
from snugfit.data.decode import failure_reason, open_image
from snugfit.data.items import SplitItems
from snugfit.data.masks import (
    Colours,
    NotAMask,
    binary_counts,
    binary_masks,
    mismatch,
    open_mask,
    upright_size,
    value_counts,
    value_problem,
)
from snugfit.data.progress import progress
from snugfit.data.seg_items import (
    NO_MASK,
    Pair,
    SegmentationItems,
    folder_pairs,
    is_jpeg_mask,
    numbered_codes,
    pairs_of,
    unknown_valid_reason,
)
from snugfit.errors import SnugfitError, UnreadableImage
from snugfit.tasks import VOID

_CHUNK = 8  # pairs per thread-pool task
_DRAFT = 32  # JPEG images are decoded at a reduced scale: every byte is still read


class _Seen(NamedTuple):
    """One pair, inspected: its mask's pixels per value, or what is wrong."""

    counts: np.ndarray | None = None
    kind: str | None = None  # a PAIR_PROBLEMS kind when something is wrong
    path: str = ""  # the file at fault
    reason: str = ""


def _inspect(image: Path, mask: Path, colours: Colours | None = None) -> _Seen:
    """Decode ``image`` (as the check of classification does) and ``mask`` (fully)."""
    try:
        open_image(image, _DRAFT)
        image_size = upright_size(image)
    except UnreadableImage as e:
        return _Seen(kind="unreadable", path=str(image), reason=e.reason)
    except Exception as e:  # a decoder bug must not stop the check: report the file
        return _Seen(kind="unreadable", path=str(image), reason=failure_reason(e))
    try:
        values = open_mask(mask, colours)
    except NotAMask as e:
        return _Seen(kind="mask format", path=str(mask), reason=e.reason)
    except UnreadableImage as e:
        return _Seen(kind="unreadable", path=str(mask), reason=e.reason)
    except Exception as e:
        return _Seen(kind="unreadable", path=str(mask), reason=failure_reason(e))
    problem = mismatch(image_size, (values.shape[1], values.shape[0]), mask)
    if problem is not None:
        return _Seen(kind="size", path=str(image), reason=problem)
    return _Seen(counts=value_counts(values))


def _inspect_all(
    pairs: Sequence[Pair], workers: int, console: Console, colours: Colours | None
) -> list[_Seen]:
    chunks = [pairs[i : i + _CHUNK] for i in range(0, len(pairs), _CHUNK)]

    def run(chunk: Sequence[Pair]) -> list[_Seen]:
        return [_inspect(image, mask, colours) for image, mask in chunk]

    seen: list[_Seen] = []
    with (
        ThreadPoolExecutor(max_workers=workers) as pool,
        progress(console, len(pairs), "checking images and masks") as advance,
    ):
        for results in pool.map(run, chunks):
            seen += results
            advance(len(results))
    return seen


def check_segmentation(
    path: str | os.PathLike,
    valid_pct: float | None = None,
    seed: int = 42,
    *,
    images: str | None = None,
    masks: str | None = None,
    workers: int | None = None,
    console: Console | None = None,
) -> SegmentationCheckReport:
    """Check a segmentation folder (see the module docstring).

    Args:
        path: The dataset folder (``images/``, ``masks/``, optional ``codes.txt`` and
            ``valid.txt``).
        valid_pct: Validation fraction of a random split (as in ``from_folder``: None
            uses valid.txt when there is one, else 0.2).
        seed: Seed of the random split.
        images, masks: The images' and masks' folders under ``path``, when named (as
            in ``from_folder``).
        workers: Decoding threads (default: twice the CPU count, at most 16).
        console: Where the progress bar is shown (default: stderr, on a terminal).

    Raises:
        SnugfitError: Layout errors (as ``from_folder``), no readable pair, an empty
            training or validation set, fewer than two classes.
    """
    start = time.perf_counter()
    root = Path(path)
    found = folder_pairs(root, valid_pct, seed, images, masks)
    pairs = [(p, "train") for p in found.train] + [(p, "valid") for p in found.valid]
    if workers is None:
        workers = min(16, 2 * (os.cpu_count() or 1))
    console = console or Console(stderr=True)
    seen = _inspect_all([p for p, _ in pairs], workers, console, found.colours)
    report = SegmentationCheckReport(
        root=str(root),
        layout=found.layout,
        valid_pct=found.valid_pct if found.layout == "split" else None,
        classes=[],
        codes=str(found.codes) if found.codes is not None else None,
        files=len(pairs) + len(found.no_mask),
        masks=len(pairs) + len(found.no_image),
        issues=_listing_problems(found, root),
        thresholded=0 if found.colours else sum(is_jpeg_mask(m) for _, m in pairs_of(found)),
        colours=[list(c) for c in found.colours] if found.colours is not None else None,
        folders=found.folders.title,
        unlabelled_folders={d.relative_to(root).as_posix(): n for d, n in found.unlabelled},
        held_out_folders={d.relative_to(root).as_posix(): n for d, n in found.held_out},
    )
    _tally(report, found, pairs, seen)
    _fatal(report, pairs)
    report.absent = [c for c in report.classes if not report.pixels["train"][c]]
    report.split = SplitItems(found.train, found.valid, report.classes, False, found.seed)
    report.seconds = time.perf_counter() - start
    return report


def _listing_problems(found: SegmentationItems, root: Path) -> list[PairProblem]:
    """Images without a mask (or sharing a name), masks without an image, links to
    folders not followed, the validation list's names of no image."""
    valid_file = str(root / found.folders.valid)
    out = [
        PairProblem("unknown name", valid_file, "", unknown_valid_reason(n, name, found.folders))
        for n, name in found.unknown_valid
    ]
    table = str(root / found.folders.rle)
    out += [
        PairProblem("bad row", table, "", f"line {n} ({name}): {why}")
        for n, name, why in found.bad_rows
    ]
    for image, reason in found.no_mask:  # never split: only pairs are
        kind = "no mask" if reason.startswith(NO_MASK) else "same name"
        out.append(PairProblem(kind, str(image), "", reason, str(image)))
    used = {m.with_suffix(""): m for _, m in pairs_of(found)}
    for mask in found.no_image:
        twin = used.get(mask.with_suffix(""))
        why = f"a second mask of this name ({twin.name} is used)" if twin else None
        out.append(
            PairProblem(
                "no image",
                str(mask),
                "",
                why or f"no image of this name in {found.folders.images}/",
            )
        )
    out += [PairProblem("link", link.path, "", link.reason) for link in found.links]
    out += [PairProblem("not image", n.path, "", n.reason) for n in map(NotImage.of, found.others)]
    return out


def _tally(
    report: SegmentationCheckReport,
    found: SegmentationItems,
    pairs: list[tuple[Pair, str]],
    seen: list[_Seen],
) -> None:
    """Classes, per-split pixels and images holding each class, and the pairs' problems."""
    readable = [s.counts for s in seen if s.counts is not None]
    total = np.sum(readable, axis=0) if readable else np.zeros(256, dtype=np.int64)
    n_codes = None if found.vocab is None else len(found.vocab)
    report.binary = found.colours is None and binary_masks(total, n_codes)  # colours: indices
    read = binary_counts if report.binary else (lambda counts: counts)
    if found.vocab is not None:
        report.classes = list(found.vocab)
    elif readable:
        values = np.flatnonzero(read(total)[:VOID])
        if not len(values):
            raise SnugfitError(
                f"{report.root}: no class values in the masks (every readable mask is void, "
                f"{VOID}); nothing to learn"
            )
        report.classes = numbered_codes(int(values[-1]))
    n = len(report.classes)
    names = [*report.classes, VOID_ROW]
    report.pixels = {s: dict.fromkeys(names, 0) for s in SPLITS}
    report.counts = {s: dict.fromkeys(report.classes, 0) for s in SPLITS}
    report.images = dict.fromkeys(SPLITS, 0)
    for ((image, mask), split), s in zip(pairs, seen, strict=True):
        counts = read(s.counts) if s.counts is not None else None
        problem = value_problem(counts, n) if counts is not None else None
        if s.kind is not None:
            report.issues.append(PairProblem(s.kind, s.path, split, s.reason, str(image)))
        elif problem is not None:
            report.issues.append(PairProblem("values", str(mask), split, problem, str(image)))
        else:
            report.images[split] += 1
            for c in np.flatnonzero(counts[:n]).tolist():
                report.counts[split][report.classes[c]] += 1
                report.pixels[split][report.classes[c]] += int(counts[c])
            report.pixels[split][VOID_ROW] += int(counts[VOID])


def _fatal(report: SegmentationCheckReport, pairs: list[tuple[Pair, str]]) -> None:
    """Raise when training cannot start from what the check found."""
    where = report.root
    if not report.usable:
        bad = next((p for p in report.issues if p.image is not None), None)
        example = f"; e.g. {bad.path}: {bad.reason}" if bad is not None else ""
        raise SnugfitError(
            f"{where}: no readable image/mask pair ({len(pairs)} pairs, none usable{example})"
        )
    if not report.images["train"]:
        raise SnugfitError(f"{where}: the training set is empty (no readable image/mask pair)")
    if not report.images["valid"]:
        raise SnugfitError(f"{where}: the validation set is empty (no readable image/mask pair)")
    if len(report.classes) < 2:
        raise SnugfitError(
            f"{where}: found only one class ({report.classes[0]!r}); need at least two"
        )
