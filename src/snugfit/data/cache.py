"""Decode once: a size-bounded on-disk cache of decoded, presized image pixels.

Decoding a JPEG and resizing it costs far more than reading the few hundred
kilobytes of uint8 pixels it becomes, and training repeats it every epoch. A
`PixelCache` keeps each decoded square as one raw ``.npy`` file, so later epochs
and later runs read (or memory-map) pixels instead.

Layout: ``root/<2 hex>/<key>.npy``, where ``key`` hashes the image's absolute
path, size and modification time with the decode parameters, so an edited image
or a new presize simply gets a new entry. Several processes (DataLoader workers,
two training runs) may share one cache: entries are written to a temporary file
in the same folder and renamed into place, so a reader sees no entry or a
complete one. Anything unreadable is a miss, never an error.

The cache is bounded by ``max_bytes``: `trim` deletes the oldest entries (by
modification time) and a process stops writing once its entries would exceed
the bound. A bound of 0 (``SNUGFIT_CACHE_SIZE=0``) turns the cache off. A folder
that cannot be written (permission denied, read-only, disk full) is not "full":
the cache stops writing there and says which it is, once; training decodes
instead.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import numpy as np
from torch.utils.data import get_worker_info

from snugfit.errors import probe_write, reason_of
from snugfit.memory.units import format_bytes, parse_bytes

logger = logging.getLogger("snugfit")

# Part of every key: bump it when the decoded pixels change (resampling, colour
# handling), so old entries are never mistaken for new ones.
FORMAT_VERSION = 3  # 2: 16-bit greyscale scaled from 8, 12 or 16 bits; 3: 16-bit RGB TIFF too
DEFAULT_CACHE_SIZE = "20GB"
_TMP_SUFFIX = ".tmp"


def cache_dir() -> Path:
    """``$SNUGFIT_CACHE``, else ``$XDG_CACHE_HOME/snugfit``, else ``~/.cache/snugfit``."""
    if os.environ.get("SNUGFIT_CACHE"):
        return Path(os.environ["SNUGFIT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "snugfit"


def cache_size(value: str | int | None = None) -> int:
    """The cache bound in bytes: ``value``, else ``$SNUGFIT_CACHE_SIZE``, else 20 GB;
    0 (``"0"``, ``"0GB"``): no cache.

    >>> cache_size("512MiB"), cache_size("0")
    (536870912, 0)

    Raises:
        SnugfitError: The value (or the variable) cannot be read as a size.
    """
    if value is not None:
        return parse_bytes(value, name="cache_size", zero=True)
    env = os.environ.get("SNUGFIT_CACHE_SIZE")
    if env:
        return parse_bytes(env, name="SNUGFIT_CACHE_SIZE", zero=True)
    return parse_bytes(DEFAULT_CACHE_SIZE, name="cache_size")


class PixelCache:
    """Decoded uint8 images on disk, one memory-mappable ``.npy`` file per entry.

    Holds only a folder name and counters, so it travels to DataLoader workers
    (each opens the files itself).

    Example::

        cache = PixelCache("/tmp/pixels", max_bytes=cache_size("512MiB"))
        key = cache.key_for("ant.jpg", ("train", 256))
        pixels = cache.get(key)  # None: decode, then cache.put(key, pixels)

    Args:
        root: Cache folder (created on the first write); default
            ``cache_dir() / "images"``.
        max_bytes: Bound on the folder's size; default from `cache_size`.
    """

    def __init__(self, root: str | os.PathLike | None = None, max_bytes: int | None = None):
        self.root = Path(root) if root is not None else cache_dir() / "images"
        self.max_bytes = cache_size() if max_bytes is None else int(max_bytes)
        # Bytes this process may still write; measured on its first write, since
        # a scan of the folder is too slow to repeat per entry.
        self._room: int | None = None
        self._warned = False
        # Why the folder cannot be written (None: it can, as far as is known); set by
        # a failed write or by `make_room`'s try, and passed on to the workers.
        self.unwritable: str | None = None

    def __repr__(self) -> str:
        return f"PixelCache({str(self.root)!r}, max_bytes={self.max_bytes})"

    # -- keys and files -------------------------------------------------------

    def key_for(self, path: str | os.PathLike, params: tuple) -> str:
        """The entry key for an image file decoded with ``params``.

        The file's absolute path, size and ``mtime_ns`` are part of the key, so a
        changed file gets a new key (the old entry ages out by `trim`).

        Args:
            path: The image file.
            params: The decode parameters, e.g. ``("train", 256)`` or
                ``("valid", 224, 0.875)``.

        Returns:
            A 32-digit hex digest.

        Raises:
            OSError: The file cannot be stat'ed (missing, no permission).
        """
        st = os.stat(path)
        text = (
            f"{FORMAT_VERSION}\0{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}\0{params!r}"
        )
        return hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()

    def path_for(self, key: str) -> Path:
        """The file an entry lives in (which may not exist)."""
        return self.root / key[:2] / f"{key}.npy"

    def touch(self, key: str) -> bool:
        """Mark an entry as just used (so `trim` deletes it last); False if it is absent.

        One system call, which doubles as the cheap existence check.
        """
        try:
            os.utime(self.path_for(key))
            return True
        except OSError:
            return False

    # -- entries --------------------------------------------------------------

    def get(self, key: str, shape: tuple[int, ...] | None = None) -> np.ndarray | None:
        """The cached uint8 array for ``key``, memory-mapped read-only; None on a miss.

        A missing, truncated or otherwise corrupt entry, or one of another shape
        than ``shape`` (when given), is a miss.
        """
        try:
            arr = np.load(self.path_for(key), mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None  # absent, or short/garbled: decode again and rewrite it
        if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8:
            return None
        if shape is not None and arr.shape != tuple(shape):
            return None
        return arr

    def read_into(self, key: str, out: np.ndarray) -> bool:
        """Read an entry straight into ``out`` (C-contiguous uint8); False on a miss.

        The fast path for whole batches: one open and one read per entry, no
        memory map and no extra copy.
        """
        try:
            with open(self.path_for(key), "rb") as f:
                version = np.lib.format.read_magic(f)
                if version != (1, 0):
                    return False
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                if shape != out.shape or fortran or dtype != np.uint8:
                    return False
                return f.readinto(memoryview(out).cast("B")) == out.nbytes
        except (OSError, ValueError, EOFError):
            return False

    def put(self, key: str, array: np.ndarray) -> bool:
        """Store ``array`` under ``key`` atomically; False if the bound stops it.

        The data goes to a temporary file in the entry's folder, then is renamed
        over the entry: concurrent readers see the old state or the whole new
        entry, never a partial one. Write errors (disk full, read-only folder)
        are logged (by the main process, not by DataLoader workers: `make_room`
        finds them there) and the image is simply not cached; no more writes are tried.
        """
        array = np.ascontiguousarray(array)
        if not self._has_room(array.nbytes):
            return False
        final = self.path_for(key)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{key}.", suffix=_TMP_SUFFIX)
            try:
                with os.fdopen(fd, "wb") as f:
                    np.lib.format.write_array(f, array, version=(1, 0), allow_pickle=False)
                os.replace(tmp, final)
            except BaseException:
                with suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as e:
            self._cannot_write(e, warn=get_worker_info() is None)
            return False
        self._room -= _entry_bytes(array.nbytes)
        return True

    def _has_room(self, nbytes: int) -> bool:
        if self.unwritable is not None:
            return False
        if self._room is None:
            self._room = self.max_bytes - self.size_bytes()
        if _entry_bytes(nbytes) <= self._room:
            return True
        self.warn_uncached("images beyond it are decoded every epoch")
        return False

    def _cannot_write(self, e: OSError, warn: bool = True) -> None:
        """The folder cannot be written: say why (once), stop trying (a failing disk
        keeps failing)."""
        self.unwritable, self._room = reason_of(e), 0
        if warn:
            self.warn_uncached("images are decoded every epoch instead")

    def warn_uncached(self, detail: str) -> None:
        """Log why images are not cached, once per process (and per worker started
        after): the cache is full (``cache_size``), or its folder cannot be written,
        and why."""
        if self._warned:
            return
        self._warned = True
        if self.unwritable is not None:
            logger.warning(
                "pixel cache %s: cannot write there (%s): %s; set $SNUGFIT_CACHE to "
                "another folder, or SNUGFIT_CACHE_SIZE=0 to turn the cache off",
                self.root,
                self.unwritable,
                detail,
            )
        else:
            logger.warning(
                "pixel cache %s is full (cache_size=%s): %s; raise cache_size or "
                "$SNUGFIT_CACHE_SIZE",
                self.root,
                format_bytes(self.max_bytes),
                detail,
            )

    def _try_writing(self) -> bool:
        """Whether the folder takes a small file now (made, written, removed)."""
        if self.unwritable is not None:
            return False
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe_write(self.root, ".probe.", _TMP_SUFFIX)
        except OSError as e:
            self._cannot_write(e)
            return False
        return True

    # -- the folder as a whole --------------------------------------------------

    def _entries(self) -> Iterator[os.DirEntry]:
        """Entry files and stale temporary files under ``root``."""
        try:
            subdirs = [d for d in os.scandir(self.root) if len(d.name) == 2 and d.is_dir()]
        except OSError:
            return
        for d in subdirs:
            try:
                yield from (e for e in os.scandir(d.path) if e.name.endswith((".npy", _TMP_SUFFIX)))
            except OSError:
                continue  # removed by another process meanwhile

    def size_bytes(self) -> int:
        """Bytes the entries use on disk now."""
        total = 0
        for e in self._entries():
            with suppress(OSError):
                total += e.stat().st_size
        return total

    def trim(self, max_bytes: int | None = None, keep_since_ns: int | None = None) -> int:
        """Delete the oldest entries (by modification time) until the folder fits.

        Args:
            max_bytes: Size to get down to; default the cache's bound.
            keep_since_ns: Never delete entries modified at or after this time
                (``time.time_ns()``), even if the folder then stays too big.

        Returns:
            Bytes freed.
        """
        target = self.max_bytes if max_bytes is None else max_bytes
        entries = []
        for e in self._entries():
            with suppress(OSError):
                st = e.stat()
                entries.append((st.st_mtime_ns, st.st_size, e.path))
        total = sum(size for _, size, _ in entries)
        freed = 0
        for mtime, size, path in sorted(entries):
            if total - freed <= target or (keep_since_ns is not None and mtime >= keep_since_ns):
                break
            with suppress(OSError):
                os.unlink(path)
                freed += size
        self._room = None  # measure again before the next write
        return freed

    def make_room(self, needed: int, keep_since_ns: int | None = None) -> int:
        """Delete the least recently used entries so that ``needed`` more bytes fit.

        Entries are deleted oldest first, but never those used (touched or
        written) since ``keep_since_ns``: a run must not evict its own entries,
        or its training and validation sets would evict each other every epoch.
        The result is also this process's allowance: workers started afterwards
        inherit it and write without scanning the folder again.

        Returns:
            Bytes that may be written now (0 when the cache is full, or its folder
            cannot be written: that is found out here and said once).
        """
        if not self._try_writing():
            return 0
        self.trim(max(0, self.max_bytes - needed), keep_since_ns)
        self._room = max(0, self.max_bytes - self.size_bytes())
        return self._room

    def clear(self) -> None:
        """Delete every entry (only files this cache wrote; ``root`` itself stays)."""
        self.trim(0)
        with suppress(OSError):
            for d in os.scandir(self.root):
                if len(d.name) == 2 and d.is_dir():
                    with suppress(OSError):
                        os.rmdir(d.path)  # only if empty: another process may be writing


def _entry_bytes(nbytes: int) -> int:
    return nbytes + 128  # the .npy header, version 1.0, padded to 64-byte alignment
