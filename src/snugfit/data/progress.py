"""A transient progress bar for the data's long passes (the cache pre-pass, the check)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn


@contextmanager
def progress(console: Console, total: int, what: str) -> Iterator[Callable[[int], None]]:
    """A transient rich progress bar on a terminal (nothing otherwise); yields ``advance(n)``.

    >>> with progress(Console(file=None, force_terminal=False), 3, "work") as advance:
    ...     advance(3)
    """
    if not console.is_terminal:
        yield lambda n: None
        return
    bar = Progress(
        TextColumn(what), BarColumn(), MofNCompleteColumn(), console=console, transient=True
    )
    task = bar.add_task(what, total=total)
    with bar:
        yield lambda n: bar.advance(task, n)
