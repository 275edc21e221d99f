"""Memory sizes for people: read ``"8GB"``, ``"8GiB"`` or a fraction of the card; print ``"1.23 GiB"``."""

from __future__ import annotations

import math
import re

from snugfit.errors import SnugfitError

MiB = 2**20
GiB = 2**30

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_BYTES_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)(?:e([+-]?\d+))?\s*([kmgt]?i?b)?\s*$", re.I)


def parse_bytes(
    value: str | int | float, total: int | None = None, name: str = "budget", zero: bool = False
) -> int:
    """Read a memory size: ``"8GB"`` (SI), ``"8GiB"`` (binary), bytes, or a fraction.

    >>> parse_bytes("8GB"), parse_bytes("512 MiB"), parse_bytes(4096)
    (8000000000, 536870912, 4096)
    >>> parse_bytes(0.5, total=16 * 2**30)
    8589934592

    Args:
        value: A string with an optional unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB;
            case-insensitive, spaces allowed), an int number of bytes, or a float or
            unitless string in (0, 1]: that fraction of ``total``.
        total: The device's memory in bytes, needed for a fraction.
        name: The argument's name, for the error message.
        zero: Accept 0 (``0``, ``"0"``, ``"0GB"``): for a bound where 0 means "off".

    Raises:
        SnugfitError: If the value cannot be read, is not positive (or 0 with
            ``zero``), or is a fraction without ``total``.
    """
    bad = SnugfitError(
        f"{name}: cannot read {value!r}; use e.g. 8GB, 8GiB, 7500MB or a fraction like 0.5 "
        "of the device"
    )
    fraction: float | None = None
    if isinstance(value, bool):
        raise bad
    if isinstance(value, int):
        n = float(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise bad
        if 0 < value <= 1:
            fraction = value
        elif value != int(value):
            raise bad
        n = value
    elif isinstance(value, str):
        match = _BYTES_RE.match(value)
        if not match:
            raise bad
        number, exponent, unit = match.groups()
        n = float(number) * 10 ** int(exponent or 0)
        unit = (unit or "").lower()
        if unit not in _UNITS:
            raise bad
        if not unit and 0 < n <= 1:
            fraction = n
        elif not unit and n != int(n):
            raise bad  # "1.5": neither a fraction nor a whole number of bytes (1.5GB?)
        n *= _UNITS[unit]
    else:
        raise bad
    if fraction is not None:
        if total is None:
            raise SnugfitError(
                f"{name}: the fraction {value!r} needs the device's total memory; "
                "give a size instead, e.g. 8GB or 8GiB"
            )
        return int(fraction * total)
    if zero and n == 0:
        return 0
    if n < 1:
        raise bad
    return round(n)


def format_bytes(n: float) -> str:
    """A size for people: ``"1.23 GiB"``, ``"512.0 MiB"``, ``"3.0 KiB"``, ``"12 B"``."""
    sign = "-" if n < 0 else ""
    n = abs(n)
    if n >= GiB:
        return f"{sign}{n / GiB:.2f} GiB"
    if n >= MiB:
        return f"{sign}{n / MiB:.1f} MiB"
    if n >= 2**10:
        return f"{sign}{n / 2**10:.1f} KiB"
    return f"{sign}{n:.0f} B"
