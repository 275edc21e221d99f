"""Image sizes: a side (``224``, a square) or ``(height, width)`` (``(1400, 2100)``).

Everything that takes a size takes either form; `as_hw` gives ``(h, w)``, `check_size`
reads and checks one (a square pair becomes its side, so ``(224, 224) == 224``
everywhere, and square sizes are saved as before), `format_size` prints it as the
command line writes it (``224``, ``1400x2100``: height x width) and `parse_size` reads
that back.

>>> as_hw(224), as_hw((1400, 2100)), check_size("size", (64, 64))
((224, 224), (1400, 2100), 64)
>>> format_size((1400, 2100)), parse_size("1400x2100"), parse_size("224")
('1400x2100', (1400, 2100), 224)
"""

from __future__ import annotations

import re

import numpy as np

from snugfit.errors import SnugfitError

Size = int | tuple[int, int]

_SIZE_RE = re.compile(r"^\s*(\d+)\s*(?:[x×]\s*(\d+))?\s*$", re.IGNORECASE)


def _side(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise SnugfitError(f"{name}: must be a positive integer, got {value!r}")
    return int(value)


def check_size(name: str, value) -> Size:
    """``value`` as a size: a positive int, or a (height, width) pair of them (a
    square pair becomes its side); else a `SnugfitError` naming ``name``."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise SnugfitError(f"{name}: expected a side or (height, width), got {value!r}")
        h, w = (_side(name, v) for v in value)
        return h if h == w else (h, w)
    return _side(name, value)


def as_hw(size: Size) -> tuple[int, int]:
    """``(height, width)`` of a size."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def format_size(size: Size) -> str:
    """``"224"`` or ``"1400x2100"`` (height x width)."""
    h, w = as_hw(size)
    return str(h) if h == w else f"{h}x{w}"


def parse_size(text: str) -> Size:
    """A size from ``"224"`` or ``"1400x2100"`` (height x width)."""
    m = _SIZE_RE.match(str(text))
    if m is None:
        raise SnugfitError(f"cannot read size {text!r}; use e.g. 224 or 1400x2100 (height x width)")
    h, w = int(m.group(1)), int(m.group(2) or m.group(1))
    return check_size("size", (h, w))


def scale_size(size: Size, factor: float, multiple: int = 1) -> Size:
    """Both sides times ``factor``, rounded to ``multiple`` (at least ``multiple``).

    >>> scale_size((1400, 2100), 0.5, 8), scale_size(224, 1.15, 8)
    ((704, 1048), 256)
    """
    h, w = as_hw(size)
    h2, w2 = (max(multiple, round(s * factor / multiple) * multiple) for s in (h, w))
    return check_size("size", (h2, w2))
