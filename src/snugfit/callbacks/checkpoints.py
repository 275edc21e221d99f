"""Save a resumable checkpoint at the end of each epoch (and every N batches)."""

from __future__ import annotations

from pathlib import Path

from ..checkpoint import save_checkpoint
from . import Callback


class SaveCheckpoint(Callback):
    """Write ``path`` after every epoch, and after every ``every_batches`` batches.

    Each write replaces the previous checkpoint atomically; ``fit(..., resume=path)``
    (or ``snugfit train --resume``) continues exactly where it was written.
    """

    order = 90  # after the recorder has logged the epoch

    def __init__(self, path, every_batches: int | None = None):
        self.path = Path(path)
        self.every_batches = every_batches

    def after_batch(self, learn) -> None:
        if self.every_batches and (learn.iter + 1) % self.every_batches == 0:
            save_checkpoint(learn, self.path, learn.position(after_batch=True))

    def after_epoch(self, learn) -> None:
        save_checkpoint(learn, self.path, learn.position(after_batch=False))
