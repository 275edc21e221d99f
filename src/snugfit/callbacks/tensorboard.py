"""Write each epoch's losses, metrics and learning rates to TensorBoard."""

from __future__ import annotations

import contextlib
from pathlib import Path

from snugfit.callbacks import Callback
from snugfit.errors import SnugfitError
from snugfit.saving.disk import optional


class TensorBoardCallback(Callback):
    """Scalars per epoch in ``log_dir``, for ``tensorboard --logdir``.

    The tags are the columns of ``metrics.csv`` (``train_loss``, ``valid_loss``,
    each metric, ``time``, ``ooms``) and ``lr/group_<i>``, each layer group's
    learning rate at the epoch's last batch. The step is the epoch's row in the
    recorder's history (``len(learn.recorder.rows) - 1``), which counts every fit
    of a recipe and survives resuming: a resumed run purges the steps its
    checkpoint did not reach, so TensorBoard shows each epoch once.

    Needs the ``tensorboard`` package (``pip install 'snugfit[tensorboard]'``);
    without it the constructor raises `SnugfitError`, before any training.
    The writer opens at the first fit and stays open across the fits of a recipe:
    call `close` at the end (each epoch's scalars are flushed as they are written).
    The logs are optional: if they cannot be written (disk full, permission
    denied), a warning says so, logging stops and training goes on.
    """

    order = 60  # after the Recorder (50) has made the epoch's row

    def __init__(self, log_dir):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise SnugfitError(
                "--tensorboard: the tensorboard package is not installed; "
                "pip install 'snugfit[tensorboard]'"
            ) from None
        self._writer_class = SummaryWriter
        self.log_dir = Path(log_dir)
        self.writer = None
        self.failed = False  # a write failed: no more logging

    def before_fit(self, learn) -> None:
        if self.writer is None and not self.failed:
            # Steps from here on replace those of an earlier (killed) run in log_dir.
            purge = len(learn.recorder.rows)
            with self._writes():
                self.writer = self._writer_class(str(self.log_dir), purge_step=purge)

    def after_epoch(self, learn) -> None:
        if self.writer is None:
            return
        rows = learn.recorder.rows
        step = len(rows) - 1
        with self._writes():
            for name, value in rows[-1].items():
                if name != "epoch" and isinstance(value, (int, float)):
                    self.writer.add_scalar(name, value, step)
            for i, lr in enumerate(learn.recorder.lrs[-1] if learn.recorder.lrs else ()):
                self.writer.add_scalar(f"lr/group_{i}", lr, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            with self._writes():
                self.writer.close()
            self.writer = None

    @contextlib.contextmanager
    def _writes(self):
        """A failed write warns once and ends the logging; training goes on."""
        done = False
        with optional(f"{self.log_dir}/", warn=not self.failed):
            yield
            done = True
        if not done:
            self.failed = True
            if self.writer is not None:
                with contextlib.suppress(Exception):  # its thread holds the same error
                    self.writer.close()
            self.writer = None
