"""Which items training can use: labels checked, unreadable files left out.

`usable_items` vets a dataset's training and validation items before any loader
is built: multi-label items get their labels as sorted tuples of valid class
indices; files already known to be unreadable are left out unopened; the others'
headers are read (in threads) unless a data check decoded them already; an empty
set is refused, and a class without a readable training image is warned about.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from snugfit.data.datasets import SkipList
from snugfit.data.decode import header_problem
from snugfit.errors import SnugfitError

logger = logging.getLogger("snugfit")

Items = list[tuple[Path, Any]]


def usable_items(
    train_items: Sequence[tuple[Any, Any]],
    valid_items: Sequence[tuple[Any, Any]],
    vocab: Sequence[str],
    *,
    multi_label: bool,
    skips: SkipList,
    where: str | os.PathLike,
    checked: bool = False,
) -> tuple[Items, Items]:
    """The training and validation items training can use.

    Args:
        train_items: ``(path, label)`` pairs for training.
        valid_items: The same for validation.
        vocab: Class names.
        multi_label: Labels are collections of class indices.
        skips: Files known to be unreadable (left out unopened); the header pass
            records the files it finds unreadable there.
        where: The data, for messages.
        checked: A data check decoded every file: open no header.

    Raises:
        SnugfitError: Too few classes, bad multi-label labels, an empty set.
    """
    if multi_label:
        if not vocab:
            raise SnugfitError(f"{where}: no labels found (every image has an empty label)")
        train_items = _label_sets(train_items, len(vocab))
        valid_items = _label_sets(valid_items, len(vocab))
    elif len(vocab) < 2:
        only = f" ('{vocab[0]}')" if vocab else ""
        raise SnugfitError(f"{where}: found only one class{only}; need at least two")
    keep = (lambda lab: lab) if multi_label else int
    train_items = _drop_unreadable(train_items, keep, skips, checked)
    valid_items = _drop_unreadable(valid_items, keep, skips, checked)
    if not train_items:
        raise SnugfitError(f"{where}: the training set is empty (no readable images)")
    if not valid_items:
        raise SnugfitError(f"{where}: the validation set is empty (no readable images)")
    if not multi_label:
        seen = {int(label) for _, label in train_items}
        untrained = [c for i, c in enumerate(vocab) if i not in seen]
        if untrained:
            logger.warning(
                f"{where}: class(es) {', '.join(map(repr, untrained))} have no readable "
                "training image: the model keeps an output for them that never learns"
            )
    return train_items, valid_items


def _label_sets(items: Sequence[tuple[Any, Any]], n_classes: int) -> list[tuple[Path, tuple]]:
    """Multi-label items with their labels as sorted tuples of valid class indices."""
    out = []
    for p, lab in items:
        if isinstance(lab, (str, bytes)) or not isinstance(lab, (Sequence, set, frozenset)):
            raise SnugfitError(f"{p}: multi_label items need a list of class indices, got {lab!r}")
        lab = tuple(sorted({int(c) for c in lab}))
        if lab and not 0 <= lab[0] <= lab[-1] < n_classes:
            raise SnugfitError(f"{p}: class index out of range [0, {n_classes}) in {lab}")
        out.append((Path(p), lab))
    return out


def _drop_unreadable(
    items: Sequence[tuple[Any, Any]], keep, skips: SkipList, checked: bool
) -> Items:
    """Items not in ``skips`` whose header parses (unless ``checked``); the others are
    recorded in ``skips``. Files already in ``skips`` are left out without being opened."""
    items = [(Path(p), keep(lab)) for p, lab in items if str(p) not in skips]
    if not items or checked:
        return items
    # Opening a header is mostly waiting on the file system: threads overlap it.
    with ThreadPoolExecutor(max_workers=min(32, 4 * (os.cpu_count() or 1))) as pool:
        problems = list(pool.map(header_problem, [p for p, _ in items], chunksize=64))
    kept = []
    for item, problem in zip(items, problems, strict=True):
        if problem is None:
            kept.append(item)
        else:
            skips.skip(item[0], problem)
    return kept
