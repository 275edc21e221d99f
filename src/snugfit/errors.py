"""Errors that carry one clear line for the user.

Every error snugfit raises on bad input is a `SnugfitError`: its message names
the file or argument and says what is wrong. The CLI prints it as a single line
(no traceback); Python users get an ordinary exception.
"""

from __future__ import annotations


class SnugfitError(ValueError):
    """Bad input or a state training cannot go on from, explained in one line."""


class UnreadableImage(SnugfitError):
    """An image file that cannot be decoded; loaders skip it and report it."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class NonFiniteLoss(SnugfitError):
    """Training stopped on a NaN or infinite loss; the last good weights are back
    (see `snugfit.train.nonfinite`). ``value`` is the loss, ``where`` the step's `StepInfo`."""

    def __init__(self, message: str, value: float = float("nan"), where=None):
        self.value, self.where = value, where
        super().__init__(message)


def first_line(e: BaseException) -> str:
    """``"Type: first line of the message"``: an exception, short enough for one log line."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def check_count(name: str, value, minimum: int = 0) -> int:
    """``value`` if it is an integer ``>= minimum``; else a `SnugfitError` naming ``name``.

    >>> check_count("epochs", 3)
    3
    """
    if isinstance(value, bool) or not hasattr(value, "__index__") or value < minimum:
        raise SnugfitError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def check_positive(name: str, value) -> float:
    """``value`` if it is a finite number ``> 0``; else a `SnugfitError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e308:
        raise SnugfitError(f"{name}: expected a positive number, got {value!r}")
    return float(value)


def check_optional_count(name: str, value):
    """``value`` if it is None or an ``int >= 1``; else a `SnugfitError` naming ``name``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SnugfitError(f"{name}: expected a positive integer or None, got {value!r}")
    return value
