"""Errors that carry one clear line for the user.

Every error snugfit raises on bad input is a `SnugfitError`: its message names
the file or argument and says what is wrong. The CLI prints it as a single line
(no traceback); Python users get an ordinary exception.
"""

from __future__ import annotations

import errno as _errno
import os
import re
import tempfile


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


class WriteError(SnugfitError):
    """A file or folder that could not be written: no space left on device, permission
    denied, read-only filesystem... (`snugfit.saving.disk` makes them from OS errors).

    Attributes:
        path: What could not be written.
        reason: Why, in words (``"no space left on device"``).
        errno: The OS error number, when known.
    """

    def __init__(self, path, reason: str, errno: int | None = None, message: str | None = None):
        self.path, self.reason, self.errno = str(path), reason, errno
        super().__init__(message or f"cannot write {self.path}: {reason}")


_REASONS = {
    _errno.ENOSPC: "no space left on device",
    _errno.EDQUOT: "disk quota exceeded",
    _errno.EACCES: "permission denied",
    _errno.EPERM: "permission denied",
    _errno.EROFS: "read-only filesystem",
    _errno.ENOENT: "no such file or folder",
    _errno.ENOTDIR: "a file is in the way of a folder",
    _errno.EISDIR: "a folder is in the way",
    _errno.EFBIG: "file too large",
    _errno.EIO: "input/output error",
    _errno.ENAMETOOLONG: "name too long",
}
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")  # std::io::Error's Display


def errno_of(e: BaseException) -> int | None:
    """The OS error number behind ``e``: an ``OSError``'s (or a `WriteError`'s), or the
    one a Rust I/O error (safetensors) puts in its message; None for other errors."""
    if isinstance(e, (OSError, WriteError)):
        return e.errno
    if isinstance(e, Exception):
        match = _RUST_OS_ERROR.search(str(e))
        return int(match.group(1)) if match else None
    return None


def reason_of(e: BaseException) -> str:
    """Why a write failed, in words, whether the OS error came from Python or from
    safetensors (a Rust I/O error: its message ends in ``(os error N)``).

    >>> reason_of(OSError(28, "No space left on device"))
    'no space left on device'
    >>> reason_of(RuntimeError("I/O error: Read-only file system (os error 30)"))
    'read-only filesystem'
    """
    if isinstance(e, WriteError):
        return e.reason
    n = errno_of(e)
    if n is None:
        return first_line(e)
    return _REASONS.get(n) or os.strerror(n).lower()


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


def probe_write(folder, prefix: str, suffix: str = "") -> None:
    """Write a small file in ``folder`` and remove it: raises the `OSError` a real
    write there would (4 KiB, since a full disk still takes an empty file)."""
    fd, probe = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=suffix)
    try:
        os.write(fd, bytes(4096))
    finally:
        os.close(fd)
        os.unlink(probe)
