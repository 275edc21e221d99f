"""A progress bar per epoch and a fastai-style table of epochs.

In a terminal, a rich progress bar tracks the batches of each epoch and
disappears when the epoch's row is printed. When output is not a terminal (CI,
logs, ``| tee``) there is no bar: rows are printed as plain lines as each epoch
ends, so logs stay readable.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from snugfit.callbacks import Callback


def format_time(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m:02d}:{s:02d}"


class ProgressCallback(Callback):
    order = 60

    def __init__(self, console: Console | None = None):
        self.console = console or Console()
        self._progress: Progress | None = None

    def before_fit(self, learn) -> None:
        self.names = ["epoch", *learn.recorder.metric_names]
        self.widths = [max(len(n), 8) for n in self.names]
        self._line(self.names)

    def before_epoch(self, learn) -> None:
        if not self.console.is_terminal:
            return
        self._progress = Progress(
            TextColumn(f"epoch {learn.epoch + 1}/{learn.n_epoch}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=learn.n_iter)

    def after_batch(self, learn) -> None:
        if self._progress is not None:
            self._progress.advance(self._task)

    def _stop_bar(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def after_epoch(self, learn) -> None:
        self._stop_bar()
        row = learn.recorder.rows[-1]
        cells = [str(row["epoch"])]
        for name in self.names[1:]:
            v = row[name]
            cells.append(format_time(v) if name == "time" else f"{v:.6f}")
        self._line(cells)

    def after_fit(self, learn) -> None:
        self._stop_bar()

    def _line(self, cells) -> None:
        text = "  ".join(c.ljust(w) for c, w in zip(cells, self.widths, strict=True))
        self.console.print(text.rstrip(), highlight=False, soft_wrap=True)
