"""Callbacks: optional behaviour hooked onto the training loop's events.

The loop (``Learner._fit``, `snugfit.train.learner`) calls the events in this order::

    before_fit
    for epoch in epochs:
        before_epoch
        before_train                      # model in train mode, frozen BN in eval
        for xb, yb in train batches:      # one batch = one optimizer step
            before_batch                  # schedules set LR / momentum; MixUp may replace xb, yb
            for each micro-batch:         # forward, weighted loss, backward
                after_loss
            before_step                   # gradients of the whole batch are ready
            optimizer step, zero_grad
            after_step
            (loss checked)                # NaN/inf stops the fit: `snugfit.train.nonfinite`
            after_batch                   # learn.loss holds the batch loss (device)
        (last loss and weights checked)
        after_train
        before_validate
        validation pass (no graph)
        after_validate                    # learn.valid_loss, learn.metric_values
        after_epoch                       # set learn.stop_training to stop early
    after_fit                             # runs even when training stops on an error

A callback overrides the events it needs; each receives the Learner and uses its
public methods (``learn.set_memory``, ``learn.save_checkpoint``, ``learn.set_hypers``...).
One callback per file. Callbacks may import ``snugfit.errors``, ``snugfit.distributed``,
``snugfit.saving`` (atomic files) and the pure schedules of ``snugfit.train.schedules``.
"""

from __future__ import annotations

EVENTS = (
    "before_fit",
    "before_epoch",
    "before_train",
    "before_batch",
    "after_loss",
    "before_step",
    "after_step",
    "after_batch",
    "after_train",
    "before_validate",
    "after_validate",
    "after_epoch",
    "after_fit",
)


class Callback:
    """Base class: every event is a no-op until overridden."""

    order = 0  # lower runs first

    def __getattr__(self, name):
        if name in EVENTS:
            return _noop
        raise AttributeError(name)


def _noop(learn) -> None:
    return None


from snugfit.callbacks.checkpoints import SaveCheckpoint  # noqa: E402
from snugfit.callbacks.cutmix import CutMix  # noqa: E402
from snugfit.callbacks.early_stopping import EarlyStopping  # noqa: E402
from snugfit.callbacks.ema import EMA  # noqa: E402
from snugfit.callbacks.mixup import MixUp  # noqa: E402
from snugfit.callbacks.progress import ProgressCallback  # noqa: E402
from snugfit.callbacks.recorder import Recorder  # noqa: E402
from snugfit.callbacks.save_best import SaveBest  # noqa: E402
from snugfit.callbacks.schedule import ParamScheduler  # noqa: E402
from snugfit.callbacks.snapshots import CycleSnapshots  # noqa: E402
from snugfit.callbacks.tensorboard import TensorBoardCallback  # noqa: E402

__all__ = [
    "EMA",
    "EVENTS",
    "Callback",
    "CutMix",
    "CycleSnapshots",
    "EarlyStopping",
    "MixUp",
    "ParamScheduler",
    "ProgressCallback",
    "Recorder",
    "SaveBest",
    "SaveCheckpoint",
    "TensorBoardCallback",
]
