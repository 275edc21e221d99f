"""What happened during training, as a list of events: phases, plans, OOMs, stops.

The learner owns an `EventLog` (``learn.events``); the learner, its recipes and
its callbacks call ``learn.events.emit(kind, **fields)`` where something worth
keeping happens. Each event is a flat dict ``{"time", "kind", **fields}`` kept
in ``records`` (the run report reads the memory plans and OOMs from there) and
handed to each sink, such as `JsonLinesSink`, which ``snugfit train`` attaches
to write ``events.jsonl`` into the run folder.

>>> log = EventLog()
>>> log.emit("phase", name="head")["kind"]
'phase'
>>> [e["name"] for e in log.of("phase")]
['head']

The kinds emitted, in the order a run meets them (fields after the colon):

- ``run_start``: out, resume (the checkpoint a resumed run starts from; each run of a
  folder appends to its log and begins with this event: `runs`); ``data``: train, valid,
  classes, unreadable (`snugfit.app.run`);
- ``freeze``: frozen_to, groups (`Learner.freeze_to`); ``resume``: checkpoint, position;
- ``recipe_start``: recipe, valid_loss; ``phase``: name, and skipped when a phase is
  left out; ``lr``: phase, lr, why (a learning rate a recipe chose); ``kept``: phase,
  valid_loss (the weights auto_fit kept) (`snugfit.train.recipes`);
- ``fit_start``: fit, epochs, start_epoch, frozen_to, size, bs, precompute;
  ``fit_end``: fit, early_stop (`Learner._fit`);
- ``plan``: `MemoryPlan.to_dict` and applied (`Learner.plan`);
- ``memory``: why, and each memory setting that changed (micro_bs, checkpointing,
  precision, accumulate, eval_bs) (`Learner.set_memory`: the plan, an OOM fallback,
  auto precision, a checkpoint, the user);
- ``epoch``: fit, the ``metrics.csv`` row (its time as ``seconds``), lrs (`Recorder`);
- ``checkpoint``: path, position (`SaveCheckpoint`);
- ``ema``: fit, updates, kept (the model kept the average, or an error dropped it) (`EMA`);
- ``oom``: phase ("train": epoch, batch, from, to, error, fit; "eval": from, to, error),
  the settings or chunk sizes before and after (``learn.oom_events`` lists them);
- ``nonfinite``: message, value, at; ``interrupt``: fit, epoch, batch (`Learner._fit`),
  or during ("lr_find") and step (a recipe's learning-rate sweep);
- ``run_end``: status (`snugfit.app.run`).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

from snugfit.saving.disk import append_text, optional


class EventLog:
    """Events in the order they happened, and the sinks that receive them."""

    def __init__(self):
        self.records: list[dict] = []
        self.sinks: list[Callable[[dict], None]] = []

    def emit(self, kind: str, **fields) -> dict:
        """Record an event and pass it to every sink; returns it.

        ``time`` (seconds since the epoch) and ``kind`` are the event's own keys.
        """
        if "time" in fields or "kind" in fields:
            raise ValueError(f"event {kind!r}: 'time' and 'kind' are not field names")
        event = {"time": round(time.time(), 3), "kind": kind, **fields}
        self.records.append(event)
        for sink in self.sinks:
            sink(event)
        return event

    def start_run(self, **fields) -> dict:
        """Record ``run_start`` first, before the events recorded so far: those come from
        setting up the run it starts (building a learner logs its freezing and memory
        settings). Call it before adding sinks, so that each run's lines in a log
        begin with its ``run_start`` (`runs` splits a log there)."""
        if self.sinks:
            raise ValueError("start_run: call it before adding sinks")
        event = self.emit("run_start", **fields)
        self.records.insert(0, self.records.pop())
        return event

    def add_sink(self, sink: Callable[[dict], None], replay: bool = True) -> None:
        """Send events to ``sink`` too; with ``replay``, the ones recorded so far first."""
        if replay:
            for event in self.records:
                sink(event)
        self.sinks.append(sink)

    def remove_sink(self, sink: Callable[[dict], None]) -> None:
        self.sinks.remove(sink)

    def of(self, *kinds: str) -> list[dict]:
        """The events of these kinds, in order."""
        return [e for e in self.records if e["kind"] in kinds]


class JsonLinesSink:
    """Append each event to ``path`` as one JSON object per line.

    The file is opened, written and closed per event, so every line is on disk
    (in the OS's hands) before training goes on: a killed run keeps its log up to
    its last event. Events come a few per epoch, never per batch, so this costs
    nothing measurable. Values JSON cannot hold become plain ones: NaN and
    infinities the strings ``"nan"``, ``"inf"``, ``"-inf"`` (strict JSON has no
    such numbers), paths and other objects their ``str``.

    A line that cannot be written (disk full) is kept and written with the next
    event that can be: training goes on, after one warning (``warn``: False
    silences it, for a run already stopping on that fault). A line is written
    whole or not at all (`snugfit.saving.disk.append_text`).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.warn = True
        self.failed = False  # some lines wait for a write that succeeds
        self._pending: list[str] = []

    def __call__(self, event: dict) -> None:
        line = json.dumps(_plain(event), ensure_ascii=False, allow_nan=False, default=str)
        self._pending.append(line + "\n")
        with optional(self.path.name, warn=self.warn and not self.failed):
            self.failed = True  # until the write below has succeeded
            append_text(self.path, "".join(self._pending))
            self._pending, self.failed = [], False


def read_events(path: str | os.PathLike) -> list[dict]:
    """The events of a JSON-lines file (none when it does not exist).

    A last line cut short by a crash is left out.
    """
    path = Path(path)
    if not path.is_file():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


def runs(events: list[dict]) -> list[list[dict]]:
    """The events of a log split into runs, each from its ``run_start`` on.

    A resumed run appends to its folder's log: the report shows the last run. Events
    before the first ``run_start`` (a log written without one) make a run of their own.

    >>> [[e["kind"] for e in run] for run in runs(
    ...     [{"kind": "run_start"}, {"kind": "epoch"}, {"kind": "run_start"}, {"kind": "resume"}])]
    [['run_start', 'epoch'], ['run_start', 'resume']]
    """
    out: list[list[dict]] = []
    for e in events:
        if e["kind"] == "run_start" or not out:
            out.append([])
        out[-1].append(e)
    return out


def _plain(value):
    """``value`` with non-finite floats as strings, recursively.

    >>> _plain({"a": [float("nan"), 1.5], "b": (float("-inf"),)})
    {'a': ['nan', 1.5], 'b': ['-inf']}
    """
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
