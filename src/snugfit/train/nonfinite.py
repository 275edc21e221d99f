"""Non-finite losses: stop training, put back the last good weights, say what to change.

A NaN or infinite loss means training diverged. In fp16 the GradScaler already
skips a step whose gradients overflow (and lowers its scale), so an isolated
non-finite loss is harmless; one that stays non-finite for ``max_nonfinite``
steps in a row will not recover. In fp32 and bf16 nothing skips the step: the
first non-finite loss has already written NaN into the weights and the
optimizer's moments. Either way the fit loop (``Learner._fit``) stops with
`NonFiniteLoss`, after putting back the last good weights.

The last good weights are a copy in host memory (the device keeps its memory
for training), taken when a fit starts and after every epoch that ends on a
finite loss: the weights an end-of-epoch checkpoint holds. One copy per epoch
costs little next to the epoch; a copy per step would not, and the weights from
right before the bad step cannot be recomputed after it (an AdamW step cannot
be undone), so a stop loses the epoch in progress. The optimizer's state is
reset rather than copied: it holds the bad step's NaN, and a copy of AdamW's
moments would triple the host memory.

Checking must not make the host wait for the device at every batch. On the CPU
reading the loss is free. On CUDA each loss is copied to pinned host memory
without blocking, an event is recorded after the copy, and the loss is checked
one step later, once the next step is queued: the host then waits only for the
step *before* the one the GPU is running, so the GPU never runs dry. An
epoch's last loss is checked when its batches end, and any unchecked loss is
checked before a checkpoint is written (`save_checkpoint` calls `resolve`), so
no checkpoint holds weights a non-finite loss has touched.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from snugfit.errors import NonFiniteLoss

log = logging.getLogger("snugfit")


@dataclass(frozen=True)
class StepInfo:
    """Where a loss came from, and the settings that made it."""

    fit: int
    epoch: int
    batch: int
    step: int  # optimizer steps since the fit started
    precision: str
    lr: float  # the largest learning rate of the layer groups

    @property
    def where(self) -> str:
        return f"fit {self.fit}, epoch {self.epoch}, batch {self.batch} (step {self.step})"


def nonfinite_message(at: StepInfo, what: str, restored_from: str) -> str:
    """The one-line explanation of a stop: what went wrong where, and what to change.

    >>> at = StepInfo(0, 1, 2, 5, "fp32", 0.1)
    >>> nonfinite_message(at, "loss is nan", "the end of epoch 0")  # doctest: +ELLIPSIS
    'loss is nan at fit 0, epoch 1, batch 2 (step 5), fp32: training stopped, ...'
    """
    fix = f"lower the learning rate (now {at.lr:.1e})"
    if at.precision == "fp16":
        fix += " or train in bf16 or fp32 (fp16 overflows above 65504)"
    elif at.precision == "bf16":
        fix += " or train in fp32"
    return (
        f"{what} at {at.where}, {at.precision}: training stopped, the weights from "
        f"{restored_from} are restored; {fix}"
    )


def nonfinite_weight(model: nn.Module) -> str | None:
    """The name of a weight or buffer holding NaN or inf, or None (one host read)."""
    state = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
    if not state:
        return None
    finite = torch.stack([torch.isfinite(v).all() for v in state.values()])
    if finite.all().item():
        return None
    return next(k for k, ok in zip(state, finite.tolist(), strict=True) if not ok)


class NonFiniteGuard:
    """Checks each training loss and stops the fit as the module docstring says.

    The loop calls `start` before a fit's first epoch (with the model and
    optimizer it guards), `check` after each optimizer step (with the step's
    loss and `StepInfo`), and `end_epoch` when an epoch's batches end.

    Args:
        max_nonfinite: in fp16, stop when this many losses in a row are non-finite
            (fp32 and bf16 stop at the first). None: no checks and no copies.
    """

    def __init__(self, max_nonfinite: int | None = 3):
        self.max_nonfinite = max_nonfinite
        self.model: nn.Module | None = None
        self.opt: torch.optim.Optimizer | None = None
        self.lagged: bool | None = None  # None: on CUDA; tests set True to run it on the CPU
        self.weights: dict[str, torch.Tensor] | None = None
        self.weights_from = ""
        self.in_a_row = 0
        self._pending = None
        self._last: StepInfo | None = None  # the last step checked

    @property
    def enabled(self) -> bool:
        return self.max_nonfinite is not None

    def start(self, model: nn.Module, opt: torch.optim.Optimizer, device: torch.device) -> None:
        if not self.enabled:
            return
        self.model, self.opt = model, opt
        self.in_a_row, self._pending, self._last = 0, None, None
        cuda = device.type == "cuda"
        self._lag = cuda if self.lagged is None else self.lagged
        if self._lag:
            # two host slots: one is being filled by the copy just queued, the
            # other holds the loss being checked
            self._slots = [torch.zeros((), pin_memory=cuda) for _ in range(2)]
            self._events = [torch.cuda.Event() if cuda else None for _ in range(2)]
            self._next = 0
        self._snapshot("the start of the fit")

    def check(self, loss: torch.Tensor, at: StepInfo) -> None:
        """Check a step's ``loss`` (on CUDA: queue it, and check the previous step's)."""
        if not self.enabled:
            return
        self._last = at
        loss = loss.detach()
        if not self._lag:
            # a host array sharing the loss's memory: no device, nothing to wait for
            self._judge(at, float(loss.to("cpu", torch.float32).numpy()))
            return
        i, self._next = self._next, 1 - self._next
        self._slots[i].copy_(loss, non_blocking=True)
        if self._events[i] is not None:
            self._events[i].record(torch.cuda.current_stream(loss.device))
        previous, self._pending = self._pending, (at, i)
        if previous is not None:
            self._settle(previous)

    def resolve(self) -> None:
        """Check the loss still pending now (on CUDA: wait for its step). Call it
        before saving weights."""
        if self.enabled and self._pending is not None:
            pending, self._pending = self._pending, None
            self._settle(pending)

    def end_epoch(self, epoch: int, more: bool) -> None:
        """Check the epoch's last loss and the weights; keep a copy of them if ``more``
        epochs follow."""
        if not self.enabled or self._last is None:
            return  # no step, nothing this fit did to check
        self.resolve()
        # A finite loss means finite weights *before* its step; the update itself
        # can still overflow (a huge learning rate), so look at the weights.
        bad = nonfinite_weight(self.model)
        if bad is not None:
            self._stop(self._last, f"weights non-finite ({bad}) after the update")
        # In fp16 a run of skipped steps may be going on: keep the older copy then.
        if more and self.in_a_row == 0:
            self._snapshot(f"the end of epoch {epoch}")

    def _settle(self, pending) -> None:
        at, i = pending
        if self._events[i] is not None:
            self._events[i].synchronize()  # that step's copy: the GPU is on a later step
        self._judge(at, float(self._slots[i].numpy()))

    def _judge(self, at: StepInfo, value: float) -> None:
        if math.isfinite(value):
            self.in_a_row = 0
            return
        self.in_a_row += 1
        limit = self.max_nonfinite if at.precision == "fp16" else 1
        if self.in_a_row >= limit:
            what = f"loss is {value}"
            if self.in_a_row > 1:
                what = f"loss non-finite for {self.in_a_row} steps in a row, the last {value}"
            self._stop(at, what, value)
        log.warning(
            f"loss is {value} at {at.where}: the GradScaler skips the step "
            f"({self.in_a_row} in a row; training stops at {limit})"
        )

    def _stop(self, at: StepInfo, what: str, value: float = math.nan) -> None:
        self._pending = None
        self._restore()
        raise NonFiniteLoss(nonfinite_message(at, what, self.weights_from), value, at)

    @torch.no_grad()
    def _snapshot(self, where: str) -> None:
        state = self.model.state_dict()
        old = self.weights
        if old is None or old.keys() != state.keys():
            old = {}
        weights = {}
        for k, v in state.items():
            w = old.get(k)
            if w is not None and w.shape == v.shape and w.dtype == v.dtype:
                weights[k] = w.copy_(v)  # reuse the host tensors of the last copy
            else:
                weights[k] = v.detach().to("cpu", copy=True)
        self.weights, self.weights_from = weights, where

    @torch.no_grad()
    def _restore(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.model.load_state_dict(self.weights)
        self.opt.state.clear()  # AdamW's moments hold the bad step's NaN: start afresh
