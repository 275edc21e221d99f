"""The files of a run folder (``snugfit train --out``), named in one place: the run
writes them (`snugfit.app.run`, the train command), the report reads them
(`snugfit.app.report`).

>>> RunFolder(Path("runs/photos")).checkpoint.as_posix()
'runs/photos/checkpoint.safetensors'
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from snugfit.data.seg_items import lacks_mask

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
# Everything a run writes into its folder, and nothing else of it.
RUN_FILES = (CONFIG, CHECK, METRICS, CHECKPOINT, EVENTS, REPORT, SKIPPED, BATCH_PNG, LOSS_PNG,
             LR_PNG, MODEL, TENSORBOARD)  # fmt: skip


def skipped_summary(reasons: Iterable[str]) -> str:
    """What ``skipped.txt`` lists, counted from the reasons: unreadable (or missing)
    files, and segmentation images left out for want of their own mask.

    >>> skipped_summary(["truncated image data", "empty file"])
    '2 unreadable file(s)'
    >>> skipped_summary(["no mask (masks/a.png not found)", "empty file"])
    '1 unreadable file(s) and 1 image(s) without a mask'
    """
    reasons = list(reasons)
    no_mask = sum(map(lacks_mask, reasons))
    parts = [f"{len(reasons) - no_mask} unreadable file(s)"] if len(reasons) > no_mask else []
    return " and ".join(parts + ([f"{no_mask} image(s) without a mask"] if no_mask else []))


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
        """The files training left out, with the reason (`skipped_summary`); only
        when some were."""
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

    def holds_run(self) -> bool:
        """Whether an earlier run wrote here (its configuration is written first)."""
        return self.config.is_file()

    def set_aside(self) -> Path:
        """Move the earlier run's files (`RUN_FILES`, nothing else of the folder) into a
        new sibling folder named after when that run started, ``<root>-YYYYMMDD-HHMMSS``
        (``-2``, ``-3``, ... when taken); returns it. A new run in ``root`` then
        replaces nothing: a model trained for hours is never overwritten by the next
        run with the same ``--out``."""
        started = datetime.datetime.fromtimestamp(self.config.stat().st_mtime)
        base = f"{self.root.name}-{started:%Y%m%d-%H%M%S}"
        kept, n = self.root.with_name(base), 1
        while kept.exists():
            n += 1
            kept = self.root.with_name(f"{base}-{n}")
        kept.mkdir(parents=True)
        for name in RUN_FILES:
            if (self.root / name).exists():
                os.replace(self.root / name, kept / name)
        return kept
