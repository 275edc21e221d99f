"""Writing files so that a crash never leaves half of one: a temporary file, flushed and
synced, renamed over the target (`atomic_write`); and tensors ready for safetensors."""

from __future__ import annotations

import contextlib
import glob
import os
from pathlib import Path

import torch

from snugfit.saving.disk import writing


def atomic_write(path, write) -> None:
    """Call ``write(tmp_path)``, fsync, then rename over ``path``.

    ``write`` must have flushed and closed the file when it returns (safetensors'
    ``save_file`` does). The temporary file's name holds this process's id: one
    left by a process killed mid-write is removed by the next write. The file gets
    the mode a new file gets (``0o666`` less the umask), whatever mode ``write``
    created it with (safetensors and tempfile use ``0o600``).

    Raises:
        WriteError: The file could not be written (no space left, permission
            denied...): ``path`` is as it was (`snugfit.saving.disk`).
    """
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            write(tmp)
            with contextlib.suppress(OSError):  # a filesystem without modes keeps its own
                os.chmod(tmp, new_file_mode())
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself is durable
        finally:
            os.close(dir_fd)


def new_file_mode() -> int:
    """The mode ``open()`` gives a new file: ``0o666`` less the process's umask."""
    try:
        with open("/proc/self/status") as f:  # Linux: read without changing it
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o077)  # elsewhere only setting it tells it: strict while it is set
    os.umask(mask)
    return 0o666 & ~mask


def _remove_stale_temporaries(path: Path) -> None:
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        pid = tmp.name.rpartition("-")[2]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


def dedupe_storage(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share memory (tied weights): give each its own.
    seen, out = set(), {}
    for k, v in tensors.items():
        ptr = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return out
