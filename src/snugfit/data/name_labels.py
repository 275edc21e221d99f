"""Classes read from file names by a regular expression: fastai's ``from_name_re``
(`snugfit.data.items.name_re_items`) and the command line's ``--label-re``
(`snugfit.data.check_names`). The class is the pattern's first group, searched in
each file's name, e.g. ``^(.+)[._-]\\d+\\.[^.]+$`` for Kaggle's ``cat.12.jpg`` and
the Oxford pets' ``great_pyrenees_12.jpg``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from snugfit.errors import SnugfitError

# The class before a number at the end of the name: cat.12.jpg, great_pyrenees_12.jpg.
LABEL_RE_GUESS = r"^(.+)[._-]\d+\.[^.]+$"


def compile_label_re(pat: str | re.Pattern, what: str = "pat") -> re.Pattern:
    """``pat`` compiled, with at least one group (the class).

    Raises:
        SnugfitError: Not a regular expression, or no group; the line names ``what``.
    """
    try:
        regex = re.compile(pat)
    except re.error as e:
        raise SnugfitError(f"{what}: '{pat}' is no regular expression ({e})") from None
    if regex.groups < 1:
        raise SnugfitError(f"{what}: '{regex.pattern}' has no group to take the label from")
    return regex


def label_by_name(
    files: Sequence[Path], regex: re.Pattern
) -> tuple[list[Path], list[str], list[Path]]:
    """The files whose name ``regex`` labels (its first group, non-empty), their labels,
    and the files it does not label."""
    matched, names, unmatched = [], [], []
    for f in files:
        m = regex.search(f.name)
        if m is None or not m.group(1):
            unmatched.append(f)
        else:
            matched.append(f)
            names.append(m.group(1))
    return matched, names, unmatched


def suggest_label_re(files: Sequence[Path]) -> str | None:
    """`LABEL_RE_GUESS` when it labels at least 80% of ``files`` with two or more
    classes, each of two files or more (names that hold their class); else None."""
    if not files:
        return None
    matched, names, _ = label_by_name(files, re.compile(LABEL_RE_GUESS))
    counts = Counter(names)
    if len(matched) < 0.8 * len(files) or len(counts) < 2 or min(counts.values()) < 2:
        return None
    return LABEL_RE_GUESS
