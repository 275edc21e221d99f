"""Save the weights at the end of each SGDR cycle (fastai 0.7's snapshot ensembles).

Each cycle ends at a low learning rate in its own minimum; the snapshots of
several cycles make an ensemble for the cost of one training run.
"""

from __future__ import annotations

import logging
from pathlib import Path

from snugfit.callbacks import Callback
from snugfit.saving.atomic import atomic_write
from snugfit.saving.disk import writing
from snugfit.train.schedules import sgdr_cycle_ends

log = logging.getLogger("snugfit")


class CycleSnapshots(Callback):
    """Write ``snapshot_dir/cycle_{k}.safetensors`` when cycle ``k`` ends.

    The cycles are those of `snugfit.train.schedules.sgdr`; ``learn.fit_sgdr(...,
    snapshot_dir=...)`` adds this callback. Files hold the model's weights only
    (``safetensors.torch.load_model`` reads them back).

    Args:
        snapshot_dir: folder for the snapshots (created if missing).
        n_cycles, cycle_len, cycle_mult: the cycles, as given to ``fit_sgdr``.
    """

    order = 70  # after the Recorder and the epoch's table row

    def __init__(self, snapshot_dir, n_cycles: int, cycle_len: int, cycle_mult: int = 2):
        self.snapshot_dir = Path(snapshot_dir)
        self.ends = sgdr_cycle_ends(n_cycles, cycle_len, cycle_mult)
        self.paths: list[Path] = []

    def before_fit(self, learn) -> None:
        with writing(self.snapshot_dir):
            self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        self.paths = []

    def after_epoch(self, learn) -> None:
        if learn.epoch not in self.ends:
            return
        from safetensors.torch import save_model

        k = self.ends.index(learn.epoch)
        path = self.snapshot_dir / f"cycle_{k}.safetensors"
        # atomic: an interrupted write never leaves a truncated snapshot behind
        atomic_write(path, lambda tmp: save_model(learn.model, str(tmp)))
        self.paths.append(path)
        log.info(f"cycle {k} ended at epoch {learn.epoch}: weights saved to {path}")
