"""The GPU kit's frame: goals, rows, the verdict, the table and the JSON file.

Each check is a function ``check(ctx) -> list[Row]``; `run_checks` runs them one
after the other, turns an exception into one failed row and goes on, prints each
check's rows as they come and rewrites the JSON file after every check, so a run
killed at its time limit still leaves the figures so far.
"""

from __future__ import annotations

import gc
import json
import math
import operator
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "==": operator.eq,
}


@dataclass(frozen=True)
class Goal:
    """A figure's goal: ``figure <op> target`` (``abs_value``: ``|figure| <op> target``)."""

    op: str
    target: float
    abs_value: bool = False

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"goal op: expected one of {', '.join(OPS)}, got {self.op!r}")

    def text(self) -> str:
        who = "|x|" if self.abs_value else "x"
        return f"{who} {self.op} {self.target:g}"


def verdict(figure: float | None, goal: Goal | None) -> bool | None:
    """Whether ``figure`` meets ``goal``: True, False, or None (no goal, or no figure).

    The one rule for pass/fail, used by the GPU run and the dry run alike. A NaN or
    infinite figure never passes.

    >>> verdict(5.0, Goal("<=", 10, abs_value=True)), verdict(-12.0, Goal("<=", 10, True))
    (True, False)
    """
    if goal is None or figure is None:
        return None
    if not math.isfinite(figure):
        return False
    value = abs(figure) if goal.abs_value else figure
    return OPS[goal.op](value, goal.target)


@dataclass
class Row:
    """One figure of one check. ``passed`` comes from `verdict` unless the row failed
    outright (an exception) or was skipped (``figure`` None, ``note`` says why)."""

    check: str
    name: str
    figure: float | None
    unit: str = ""
    goal: Goal | None = None
    note: str = ""
    dry_run: bool = False
    passed: bool | None = None
    error: str | None = None

    def __post_init__(self):
        if self.error is None:
            self.passed = verdict(self.figure, self.goal)
        else:
            self.passed = False

    def to_dict(self) -> dict:
        d = asdict(self)
        d["goal"] = None if self.goal is None else {**asdict(self.goal), "text": self.goal.text()}
        return d


@dataclass
class Ctx:
    """What every check gets: the device, the mode, a console, and a place for
    figures a later check reuses (``shared``, e.g. the training rate)."""

    device: torch.device
    dry: bool
    quick: bool
    console: Console
    shared: dict = field(default_factory=dict)

    def row(self, check: str, name: str, figure, unit="", goal=None, note="") -> Row:
        figure = None if figure is None else float(figure)
        return Row(check, name, figure, unit, goal, note, dry_run=self.dry)

    def clean(self) -> None:
        """Free what a check left and lift any memory cap it set."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.set_per_process_memory_fraction(1.0, self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)


def fmt(figure: float | None) -> str:
    if figure is None:
        return "-"
    if figure != 0 and (abs(figure) >= 1e5 or abs(figure) < 1e-3):
        return f"{figure:.3g}"
    return f"{figure:.4g}"


def rows_table(rows: list[Row], title: str) -> Table:
    table = Table(title=title, show_lines=False)
    for col in ("check", "figure", "value", "unit", "goal", "result", "note"):
        table.add_column(col, justify="right" if col == "value" else "left", overflow="fold")
    for r in rows:
        result = {True: "[green]pass[/]", False: "[red]FAIL[/]", None: "-"}[r.passed]
        if r.dry_run:
            result += " (dry-run)"
        note = r.error or r.note
        goal = r.goal.text() if r.goal else ""
        table.add_row(r.check, r.name, fmt(r.figure), r.unit, goal, result, note)
    return table


def write_json(path: Path | None, meta: dict, rows: list[Row]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"meta": meta, "rows": [r.to_dict() for r in rows]}, indent=1))
    tmp.replace(path)


def run_checks(ctx: Ctx, checks: dict[str, Callable], meta: dict, out: Path | None) -> list[Row]:
    """Run each check, print its rows, rewrite ``out`` after each; return all rows."""
    rows: list[Row] = []
    for name, check in checks.items():
        start = time.perf_counter()
        try:
            new = check(ctx)
        except Exception as e:  # one check's failure must not stop the others
            traceback.print_exc()
            msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            new = [Row(name, "check raised", None, error=msg[:300], dry_run=ctx.dry)]
        finally:
            ctx.clean()
        seconds = time.perf_counter() - start
        rows += new
        meta.setdefault("seconds", {})[name] = round(seconds, 1)
        write_json(out, meta, rows)
        ctx.console.print(rows_table(new, f"{name} ({seconds:.0f} s)"))
        ctx.console.file.flush()
    return rows
