"""The data check of images whose file names hold their class (``--label-re``).

Kaggle's Dogs vs. Cats (``train/cat.12.jpg``) and the Oxford pets
(``great_pyrenees_12.jpg``) come without class folders. `check_names` labels each
image under a folder (recursively) by the first group of a regular expression on its
name (`snugfit.data.name_labels`), as ``ImageDataLoaders.from_name_re`` does, splits
them at random (stratified), and checks them as `snugfit.data.check.check_folder`
does. Unlike ``from_name_re``, which raises as fastai does, a file whose name the
pattern does not label is reported (``unlabelled``) and left out, not fatal.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from rich.console import Console

from snugfit.data.check import Item, check_items
from snugfit.data.check_report import IMBALANCE_RATIO, BadImage, CheckReport
from snugfit.data.items import SplitItems, image_files_in, labelled, split_items
from snugfit.data.name_labels import compile_label_re, label_by_name
from snugfit.errors import SnugfitError
from snugfit.sizes import Size


def check_names(
    path: str | os.PathLike,
    pat: str,
    valid_pct: float | None = None,
    seed: int = 42,
    *,
    size: Size = 224,
    max_imbalance: float = IMBALANCE_RATIO,
    workers: int | None = None,
    console: Console | None = None,
) -> CheckReport:
    """Check the images under ``path`` labelled by ``pat`` on their names.

    Args:
        path: The folder (searched recursively).
        pat: A regular expression whose first group, searched in a file's name, is
            its class.
        valid_pct: Validation fraction of the random split (None: 0.2).
        seed, size, max_imbalance, workers, console: As for `check_folder`.

    Raises:
        SnugfitError: No folder or no images, a bad pattern, no name it labels,
            one class only, and the errors of `check_folder`.
    """
    start = time.perf_counter()
    root = Path(path)
    regex = compile_label_re(pat, "--label-re")
    files, names, unmatched = label_by_name(image_files_in(root), regex)
    if not files:
        raise SnugfitError(
            f"{root}: --label-re '{pat}' labels no file name (e.g. {unmatched[0].name})"
        )
    vocab, labels = labelled(files, names)
    if len(vocab) < 2:
        raise SnugfitError(
            f"{root}: --label-re '{pat}' finds only one class ({vocab[0]!r}); need at least two"
        )
    valid_pct = 0.2 if valid_pct is None else valid_pct
    train, valid = split_items(files, labels, valid_pct, seed)
    items = [Item(Path(p), "train", (vocab[lab],)) for p, lab in train]
    items += [Item(Path(p), "valid", (vocab[lab],)) for p, lab in valid]
    report = check_items(
        items, vocab, root, layout="split", valid_pct=valid_pct, size=size,
        max_imbalance=max_imbalance, workers=workers, console=console,
    )  # fmt: skip
    report.label_re = regex.pattern
    reason = f"file name not labelled by --label-re '{regex.pattern}'"
    report.unlabelled = [BadImage(str(f), "", "", reason) for f in unmatched]
    report.split = SplitItems(train, valid, vocab, False, seed)
    report.seconds = time.perf_counter() - start
    return report
