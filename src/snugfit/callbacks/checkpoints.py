"""Save a resumable checkpoint at the end of each epoch (and every N batches, and on Ctrl-C)."""

from __future__ import annotations

from pathlib import Path

from snugfit.callbacks import Callback


class SaveCheckpoint(Callback):
    """Write ``path`` after every epoch, after every ``every_batches`` batches, and
    after the batch during which Ctrl-C was pressed (``learn.interrupted``).

    Each write replaces the previous checkpoint atomically; ``fit(..., resume=path)``
    (or ``snugfit train --resume``) continues exactly where it was written.
    """

    order = 90  # after the recorder has logged the batch or the epoch

    def __init__(self, path, every_batches: int | None = None):
        self.path = Path(path)
        self.every_batches = every_batches

    def after_batch(self, learn) -> None:
        due = self.every_batches and (learn.iter + 1) % self.every_batches == 0
        if due or learn.interrupted:
            self._save(learn, learn.position(after_batch=True))

    def after_epoch(self, learn) -> None:
        self._save(learn, learn.position(after_batch=False))

    def _save(self, learn, position: dict) -> None:
        learn.save_checkpoint(self.path, position)
        learn.events.emit("checkpoint", path=str(self.path), position=position)
        if learn.interrupted:
            p = position
            learn.console.print(
                f"interrupted: saved a resumable checkpoint to {self.path} (it goes on at fit "
                f"{p['fit_index']}, epoch {p['epoch']}, batch {p['iter']})",
                highlight=False,
                soft_wrap=True,  # a path broken over two lines cannot be copied
            )
