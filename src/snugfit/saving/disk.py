"""Disk faults in one place: a failed write as one line, outputs a run can do without,
and trying a folder before a command writes there.

A write that fails for lack of space or permission raises `WriteError`, a
`SnugfitError` that names the file and says why in words
(`snugfit.errors.reason_of`), whether the OS error came from Python (an
``OSError``) or from safetensors (a Rust I/O error, "... (os error 28)").
`writing` makes them; `optional` turns them into a warning for outputs a run can
do without (plots, the report, TensorBoard, the logs it can write again);
`check_writable` tries a folder before a command starts; `append_text` adds to a
log file whole or not at all, so a full disk never leaves half a line.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from pathlib import Path

from snugfit.errors import SnugfitError, WriteError, errno_of, probe_write, reason_of

log = logging.getLogger("snugfit")

# What to do about each fault before trying again.
_FIXES = {
    errno.ENOSPC: "free some space",
    errno.EDQUOT: "free some space",
    errno.EACCES: "make the folder writable",
    errno.EPERM: "make the folder writable",
    errno.EROFS: "make the filesystem writable",
}
# The faults a user fixes on their side (space, permissions), not bugs.
DISK_FAULTS = frozenset(_FIXES)


def fix_for(e: BaseException) -> str:
    """What to do before trying again: ``"free some space"``, ``"make the folder writable"``,
    ``"fix that"``."""
    return _FIXES.get(errno_of(e), "fix that")


def disk_fault(e: BaseException) -> str | None:
    """``e`` in one line if it is a disk fault (no space, permission denied, read-only
    filesystem), naming the file when it is known; None for any other error."""
    if isinstance(e, WriteError):
        return str(e)
    if errno_of(e) not in DISK_FAULTS:
        return None
    name = getattr(e, "filename", None)
    return f"{name}: {reason_of(e)}" if name else reason_of(e)


@contextlib.contextmanager
def writing(path):
    """Turn a failed write in the block (an OS error, from Python or from safetensors)
    into a `WriteError` naming ``path``; other errors go through as they are."""
    try:
        yield
    except WriteError:
        raise
    except Exception as e:
        n = errno_of(e)
        if n is None:
            raise
        raise WriteError(path, reason_of(e), n) from e


@contextlib.contextmanager
def optional(what, warn: bool = True, unwritten: list | None = None):
    """Run the block; if a write in it fails (see `writing`), log a warning and go on.

    For outputs a run can do without: the plots, the report, TensorBoard. ``what``
    names the output (and goes into ``unwritten``, when given, if it failed); with
    ``warn`` False the failure is logged at debug level only (the run is already
    stopping on the same fault).
    """
    try:
        yield
    except Exception as e:
        if errno_of(e) is None:
            raise
        message = str(e) if isinstance(e, WriteError) else f"cannot write {what}: {reason_of(e)}"
        log.log(logging.WARNING if warn else logging.DEBUG, f"{message}; going on without it")
        if unwritten is not None:
            unwritten.append(str(what))


def check_writable(folder, name: str) -> None:
    """Raise one `SnugfitError` line unless ``folder`` can be created and written.

    Makes the missing folders and writes a small file in ``folder``, then removes
    what it made: the check leaves nothing behind. ``name`` is where the folder
    came from (``"--out"``), for the message.
    """
    folder = Path(folder)
    made: list[Path] = []
    try:
        missing, p = [], folder
        while not p.exists() and p != p.parent:
            missing.append(p)
            p = p.parent
        if not p.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"{p} is a file, not a folder", str(p))
        for d in reversed(missing):
            d.mkdir()
            made.append(d)
        probe_write(folder, ".snugfit-probe-")
    except OSError as e:
        where = f": {e.filename}" if e.filename and Path(e.filename) != folder else ""
        raise SnugfitError(f"{name} {folder}: cannot write there ({reason_of(e)}{where})") from None
    finally:
        for d in reversed(made):
            with contextlib.suppress(OSError):
                d.rmdir()


def append_text(path, text: str, sync: bool = False) -> None:
    """Append ``text`` to ``path`` whole, or not at all.

    A write that fails midway (disk full) is cut back to where the file ended, so
    a log never holds half a line; with ``sync`` the text is on disk on return.

    Raises:
        WriteError: The text could not be written.
    """
    data = memoryview(text.encode("utf-8"))
    with writing(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            end = os.fstat(fd).st_size
            try:
                while data:
                    data = data[os.write(fd, data) :]
                if sync:
                    os.fsync(fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, end)
                raise
        finally:
            os.close(fd)
