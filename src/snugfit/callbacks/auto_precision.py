"""precision="auto" on a CPU with bf16 instructions: measure, then keep the faster.

Whether bf16 autocast beats fp32 on a CPU depends on the model, the image size
and the batch (EfficientNet-Lite0: 1.4x faster at 224 px and bs 32, 0.55x at 64
px), so the first steps of each phase (a frozen or unfrozen network at a given
size) alternate fp32 and bf16; after ``warmup`` steps of each, ``timed`` steps
of each are timed and the faster precision is kept for the rest of the phase
and remembered for the next time that phase comes. Every one of these steps is
a real training step, so measuring costs nothing but a few steps' worth of
the slower precision. bf16 must be at least 10% faster to be chosen.
"""

from __future__ import annotations

import logging
from time import perf_counter

from snugfit.callbacks import Callback

log = logging.getLogger("snugfit")


def pick(times: dict[str, list[float]], margin: float = 0.9) -> str:
    """bf16 if its fastest step beats fp32's fastest by at least ``1 - margin``.

    The fastest, not the median: interruptions only ever add time.

    >>> pick({"fp32": [1.0, 1.1], "bf16": [0.7, 0.8]})
    'bf16'
    >>> pick({"fp32": [1.0, 1.0], "bf16": [0.95, 0.95]})
    'fp32'
    """
    return "bf16" if min(times["bf16"]) < margin * min(times["fp32"]) else "fp32"


class AutoPrecision(Callback):
    order = -5  # before the step, after the LR schedule

    def __init__(self, warmup: int = 1, timed: int = 2):
        self.warmup, self.timed = warmup, timed
        self.chosen: dict[tuple, str] = {}  # phase -> precision

    def _phase(self, learn) -> tuple:
        return (learn.frozen_to, getattr(learn.dls, "size", None), learn.net is learn.model)

    def before_fit(self, learn) -> None:
        self.key = self._phase(learn)
        self.times = {"fp32": [], "bf16": []}
        self.n = 0
        if self.key in self.chosen:
            learn.set_memory("auto precision", precision=self.chosen[self.key])

    def before_batch(self, learn) -> None:
        if self.key in self.chosen:
            return
        precision = ("fp32", "bf16")[self.n % 2]
        if learn.precision != precision:
            learn.set_memory("auto precision: timing", precision=precision)
        self._start = perf_counter()

    def after_batch(self, learn) -> None:
        if self.key in self.chosen:
            return
        if self.n >= 2 * self.warmup:  # the first steps of each warm up kernels
            self.times[learn.precision].append(perf_counter() - self._start)
        self.n += 1
        if self.n == 2 * (self.warmup + self.timed):
            choice = pick(self.times)
            self.chosen[self.key] = choice
            learn.set_memory("auto precision", precision=choice)
            ms = {p: 1e3 * min(t) for p, t in self.times.items()}
            log.info(
                f"precision auto: a step took {ms['bf16']:.0f} ms in bf16, "
                f"{ms['fp32']:.0f} ms in fp32: training goes on in {choice}"
            )
