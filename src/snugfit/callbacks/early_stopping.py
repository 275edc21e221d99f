"""Stop training when a monitored value stops improving (fastai's EarlyStoppingCallback).

`Monitor` holds the logic shared with `SaveBest`: which column of the epoch rows
to watch, which direction is better, and what counts as an improvement.
"""

from __future__ import annotations

import logging
import math
import operator
from collections.abc import Callable

from snugfit.callbacks import Callback
from snugfit.errors import SnugfitError

log = logging.getLogger("snugfit")


def lower_is_better(name: str) -> bool:
    """fastai's rule: names with "loss" or "error" in them are minimised, others maximised."""
    return "loss" in name or "error" in name


class Monitor:
    """The best value so far of one column of ``learn.recorder.rows``.

    Args:
        monitor: the column: "valid_loss", "train_loss" or a metric's name.
        min_delta: an improvement must be larger than this.
        comp: ``comp(new, best)`` is True when ``new`` is better; None infers it
            from the name (see `lower_is_better`).
    """

    def __init__(self, monitor: str, min_delta: float = 0.0, comp: Callable | None = None):
        if not isinstance(monitor, str):
            raise SnugfitError(f"monitor: expected a column name, got {monitor!r}")
        if not min_delta >= 0:
            raise SnugfitError(f"min_delta: expected a number >= 0, got {min_delta!r}")
        self.name, self.min_delta = monitor, float(min_delta)
        self.comp = comp or (operator.lt if lower_is_better(monitor) else operator.gt)
        self.reset()

    def reset(self) -> None:
        self.best: float | None = None
        self.best_epoch: int | None = None

    def check_name(self, learn) -> None:
        """Raise unless the epoch rows will have the column (call at ``before_fit``)."""
        known = [n for n in learn.recorder.metric_names if n != "time"]
        if self.name not in known:
            raise SnugfitError(
                f"monitor: unknown value {self.name!r}; available: {', '.join(known)}"
            )

    def update(self, learn) -> bool:
        """Read the last epoch's value; True (and remember it) if it improves on the best."""
        row = learn.recorder.rows[-1]
        if self.name not in row:
            keys = [k for k in row if k != "epoch"]
            raise SnugfitError(
                f"monitor: unknown value {self.name!r}; available: {', '.join(keys)}"
            )
        value = float(row[self.name])
        if math.isnan(value):
            return False  # a NaN loss never improves on anything
        if self.best is not None and not (
            self.comp(value, self.best) and abs(value - self.best) > self.min_delta
        ):
            return False
        self.best, self.best_epoch = value, learn.epoch
        return True


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` epochs.

    Args:
        monitor: "valid_loss" (default), "train_loss" or a metric's name.
        min_delta: the smallest change that counts as an improvement.
        patience: epochs without improvement before stopping.
        comp: ``comp(new, best)`` is True when ``new`` is better; None: lower is
            better for names with "loss" or "error", higher for the others.
    """

    order = 70  # after the Recorder (which appends the epoch's row) and the table row

    def __init__(
        self,
        monitor: str = "valid_loss",
        min_delta: float = 0.0,
        patience: int = 1,
        comp: Callable | None = None,
    ):
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise SnugfitError(f"patience: expected a positive integer, got {patience!r}")
        self.monitor = Monitor(monitor, min_delta, comp)
        self.patience = patience

    def before_fit(self, learn) -> None:
        self.monitor.check_name(learn)
        self.monitor.reset()  # each fit starts afresh, as fastai's reset_on_fit
        self.wait = 0

    def after_epoch(self, learn) -> None:
        if self.monitor.update(learn):
            self.wait = 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            m = self.monitor
            log.info(
                f"early stopping after epoch {learn.epoch}: {m.name} has not improved on "
                f"{m.best} (epoch {m.best_epoch}) for {self.wait} epochs"
            )
            learn.stop_training = True
