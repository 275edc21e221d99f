"""The files of a run folder (``snugfit train --out``), named in one place: the run
writes them (`snugfit.app.run`, the train command), the report reads them
(`snugfit.app.report`).

>>> RunFolder(Path("runs/photos")).checkpoint.as_posix()
'runs/photos/checkpoint.safetensors'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CONFIG = "config.json"
CHECK = "check.json"
METRICS = "metrics.csv"
CHECKPOINT = "checkpoint.safetensors"
EVENTS = "events.jsonl"
REPORT = "report.html"
SKIPPED = "skipped.txt"
BATCH_PNG = "batch.png"
LOSS_PNG = "loss.png"
LR_PNG = "lr.png"
MODEL = "model"
TENSORBOARD = "tensorboard"


@dataclass(frozen=True)
class RunFolder:
    """The paths of one run's files, under ``root``."""

    root: Path

    @property
    def config(self) -> Path:
        """The resolved configuration (`TrainConfig.to_json`)."""
        return self.root / CONFIG

    @property
    def check(self) -> Path:
        """The data check (`CheckReport.to_json`)."""
        return self.root / CHECK

    @property
    def metrics(self) -> Path:
        """One row per epoch, appended as each ends."""
        return self.root / METRICS

    @property
    def checkpoint(self) -> Path:
        """The resumable checkpoint: what ``--resume`` takes."""
        return self.root / CHECKPOINT

    @property
    def events(self) -> Path:
        """The event log, one JSON object per line (`snugfit.events`)."""
        return self.root / EVENTS

    @property
    def report(self) -> Path:
        """The run report (`snugfit.app.report`)."""
        return self.root / REPORT

    @property
    def skipped(self) -> Path:
        """The files that could not be read, with the reason; only when some were."""
        return self.root / SKIPPED

    @property
    def batch_png(self) -> Path:
        """An augmented training batch, as the model sees it."""
        return self.root / BATCH_PNG

    @property
    def loss_png(self) -> Path:
        return self.root / LOSS_PNG

    @property
    def lr_png(self) -> Path:
        return self.root / LR_PNG

    @property
    def model(self) -> Path:
        """The saved model folder (safetensors + JSON), for ``snugfit predict``."""
        return self.root / MODEL

    @property
    def tensorboard(self) -> Path:
        """TensorBoard logs, with ``--tensorboard``."""
        return self.root / TENSORBOARD
