"""Set learning rates and momentum before each batch from pure schedules."""

from __future__ import annotations

from collections.abc import Sequence

from snugfit.callbacks import Callback
from snugfit.train.schedules import Schedule


class ParamScheduler(Callback):
    """Drive the optimizer's hyper-parameters from schedules of training progress.

    Args:
        lr_scheds: one schedule per layer group, each a function of ``pct`` in [0, 1].
        mom_sched: momentum (beta1 for AdamW) as a function of ``pct``, or None.
    """

    order = -10

    def __init__(self, lr_scheds: Sequence[Schedule], mom_sched: Schedule | None = None):
        self.lr_scheds = list(lr_scheds)
        self.mom_sched = mom_sched

    def before_batch(self, learn) -> None:
        pct = learn.pct_train
        lrs = [s(pct) for s in self.lr_scheds]
        mom = self.mom_sched(pct) if self.mom_sched else None
        learn.set_hypers(lrs, mom)
        learn.recorder.record_hypers(lrs, mom)
