"""Record losses, learning rates and metrics; write them as CSV; plot them."""

from __future__ import annotations

import copy
import csv
import io
import time
from pathlib import Path

import torch

from snugfit.callbacks import Callback
from snugfit.distributed import is_main
from snugfit.saving.atomic import atomic_write
from snugfit.saving.disk import append_text, optional


class Recorder(Callback):
    """Keeps the history of a Learner's training.

    Batch losses stay on the device during an epoch (no host sync per step) and
    are copied to the host once, at the epoch's end. With ``csv_path`` set, each
    epoch's row is appended to that file and synced to disk; resuming from a
    checkpoint rewrites the file with the checkpoint's rows, so the rows a killed
    run wrote after its last checkpoint are neither duplicated nor kept. A row that
    cannot be written (disk full) is warned about and training goes on: the next
    epoch rewrites the whole file (the rows are in memory, and in the checkpoint).
    """

    order = 50

    def __init__(self):
        self.losses: list[float] = []  # per training batch, all fits
        self.lrs: list[list[float]] = []  # per training batch, one per layer group
        self.moms: list[float | None] = []
        self.rows: list[dict] = []  # per epoch
        self.csv_path: Path | None = None
        self._csv_stale = False  # a write failed: rewrite the whole file next time
        self._epoch_losses: list[torch.Tensor] = []

    def state(self) -> dict:
        """The history as plain JSON-able values, including the epoch in progress."""
        partial = {
            "losses": torch.stack(self._epoch_losses).float().cpu().tolist()
            if self._epoch_losses
            else [],
            "sum": float(getattr(self, "_sum_train", 0.0)),
            "n": float(getattr(self, "_n_train", 0.0)),
            "time": time.perf_counter() - getattr(self, "_start", time.perf_counter()),
        }
        return {
            "losses": self.losses,
            "lrs": self.lrs,
            "moms": self.moms,
            "rows": self.rows,
            "partial": partial,
        }

    def load_state(self, state: dict) -> None:
        self.losses, self.lrs, self.moms = state["losses"], state["lrs"], state["moms"]
        self.rows = state["rows"]
        self._resume_partial = state["partial"]  # picked up by the resumed epoch
        if self.csv_path is not None and is_main():
            self._write_csv()

    def snapshot(self) -> dict:
        """Everything recorded so far, to put back with `restore` (a trial run's
        history, as lr_find's, must not stay): the same objects, and their contents."""
        return {k: (v, copy.copy(v)) for k, v in vars(self).items()}

    def restore(self, saved: dict) -> None:
        """Put back what `snapshot` saved."""
        vars(self).clear()
        for k, (obj, content) in saved.items():
            if isinstance(obj, list):
                obj[:] = content
            setattr(self, k, obj)

    def record_hypers(self, lrs, mom) -> None:
        self.lrs.append(list(lrs))
        self.moms.append(mom)

    def before_fit(self, learn) -> None:
        self.metric_names = ["train_loss", "valid_loss", *learn.metric_names, "time"]

    def before_epoch(self, learn) -> None:
        self._start = time.perf_counter()
        self._epoch_losses = []
        self._n_train = torch.zeros((), device=learn.device)
        self._sum_train = torch.zeros((), device=learn.device)
        partial = getattr(self, "_resume_partial", None)
        if partial is not None:  # an epoch resumed mid-way: its first batches count too
            self._resume_partial = None
            self._start -= partial["time"]
            self._epoch_losses = [torch.tensor(x, device=learn.device) for x in partial["losses"]]
            self._n_train += partial["n"]
            self._sum_train += partial["sum"]
        self._ooms_before = len(learn.events.of("oom"))

    def after_batch(self, learn) -> None:
        loss = learn.loss.detach()
        self._epoch_losses.append(loss)
        n = getattr(learn, "batch_n", learn.yb.shape[0])  # under torchrun: the global batch
        self._sum_train += loss * n
        self._n_train += n

    def after_epoch(self, learn) -> None:
        if self._epoch_losses:
            self.losses.extend(torch.stack(self._epoch_losses).float().cpu().tolist())
            train_loss = (self._sum_train / self._n_train).item()
        else:
            train_loss = float("nan")
        row = {"epoch": learn.epoch, "train_loss": train_loss, "valid_loss": learn.valid_loss}
        row.update(learn.metric_values)
        row["time"] = time.perf_counter() - self._start
        row["ooms"] = len(learn.events.of("oom")) - self._ooms_before  # OOM retries this epoch
        self.rows.append(row)
        if self.csv_path is not None and is_main():  # under torchrun, rank 0 writes
            self._write_csv(row)
        lrs = self.lrs[-1] if self.lrs else None  # each layer group's at the epoch's last batch
        fields = {("seconds" if k == "time" else k): v for k, v in row.items()}
        learn.events.emit("epoch", fit=learn.fit_index, **fields, lrs=lrs)
        # The epoch is complete: a checkpoint written now has no partial epoch to resume.
        self._epoch_losses, self._sum_train, self._n_train = [], 0.0, 0.0
        self._start = time.perf_counter()

    def _write_csv(self, row: dict | None = None) -> None:
        """Append ``row`` (synced: it survives a crash, as the checkpoint after it
        does); with no row, or after a failed write, rewrite the whole file. A
        failure warns (once) and training goes on."""
        rewrite, warn = row is None or self._csv_stale, not self._csv_stale
        self._csv_stale = True  # until the write below has succeeded
        with optional(self.csv_path.name, warn=warn):
            if rewrite:
                self._rewrite_csv()
            else:
                empty = not self.csv_path.is_file() or self.csv_path.stat().st_size == 0
                text = io.StringIO(newline="")
                _write_rows(text, [row], header=empty)
                append_text(self.csv_path, text.getvalue(), sync=True)
            self._csv_stale = False

    def _rewrite_csv(self) -> None:
        """The CSV of ``self.rows`` alone (none: no file), replaced atomically."""
        if not self.rows:
            self.csv_path.unlink(missing_ok=True)
            return

        def write(tmp):
            with open(tmp, "w", newline="") as f:
                _write_rows(f, self.rows, header=True)

        atomic_write(self.csv_path, write)

    # -- plots -------------------------------------------------------------
    def plot_loss(self, path="loss.png", skip_start: int = 0, with_valid: bool = True) -> Path:
        """Save training loss per batch (and validation loss per epoch) as a PNG."""
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(range(skip_start, len(self.losses)), self.losses[skip_start:], label="train")
        if with_valid and self.rows:
            ends = _epoch_end_iters(self)
            ax.plot(ends, [r["valid_loss"] for r in self.rows], "o-", label="valid")
        ax.set_xlabel("batch")
        ax.set_ylabel("loss")
        ax.legend()
        return save_figure(fig, path)

    def plot_lr(self, path="lr.png") -> Path:
        """Save the learning rate of each layer group per batch as a PNG."""
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6, 4))
        if self.lrs:
            for g in range(len(self.lrs[0])):
                ax.plot([lr[g] for lr in self.lrs], label=f"group {g}")
            ax.set_yscale("log")
            ax.legend(fontsize="small")
        ax.set_xlabel("batch")
        ax.set_ylabel("learning rate")
        return save_figure(fig, path)


def _write_rows(f, rows: list[dict], header: bool) -> None:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    if header:
        writer.writeheader()
    for row in rows:
        writer.writerow({k: f"{v:.6f}" if isinstance(v, float) else v for k, v in row.items()})


def _epoch_end_iters(rec: Recorder) -> list[int]:
    # Each row is an epoch; spread batches evenly across epochs for plotting.
    n_epochs = len(rec.rows)
    per = len(rec.losses) / max(n_epochs, 1)
    return [round(per * (i + 1)) - 1 for i in range(n_epochs)]


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path) -> Path:
    """Save ``fig`` as a PNG at ``path`` (its folder made, written atomically) and close it."""
    path = Path(path)
    try:
        fig.tight_layout()
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        pyplot().close(fig)
    return path
