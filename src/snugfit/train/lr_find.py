"""fastai's learning-rate finder, through the Learner's own training step.

The sweep trains on successive batches while the learning rate grows
exponentially from ``start_lr`` to ``end_lr``, records an exponentially smoothed
loss, and stops once that loss diverges. Every step is ``learn.train_step``, so
micro-batching, mixed precision and out-of-memory recovery apply exactly as in
training. The sweep runs in ``learn.trial()``: afterwards everything it touched is
put back (`TrainingSnapshot`): weights and buffers, optimizer state and
hyper-parameters, GradScaler, which parameters train, module train/eval modes,
the random number generators, the recorder and the training loader's epoch
counter. Memory settings that an out-of-memory fallback lowered during the sweep
are kept: training would hit the same wall. Ctrl-C during a recipe's sweep
(``auto_fit``'s) stops it after the step in progress, as in a fit: the learner is
put back and KeyboardInterrupt raised.

The suggestions are pure functions of ``(lrs, losses)``:

>>> lrs, losses = [1e-4, 1e-3, 1e-2, 1e-1, 1.0], [3.0, 2.0, 1.0, 2.0, 5.0]
>>> suggest_valley(lrs, losses), suggest_minimum(lrs, losses), suggest_steep(lrs, losses)
(0.001, 0.001, 0.0001)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from snugfit.errors import SnugfitError

BETA = 0.98  # smoothing of the recorded loss, as fastai's AvgSmoothLoss
DIVERGE = 4.0  # stop once the smoothed loss exceeds this many times its minimum


# -- the math: pure functions of the curve ------------------------------------
def exp_lr(start_lr: float, end_lr: float, pct: float) -> float:
    """The LR a fraction ``pct`` of the way from ``start_lr`` to ``end_lr`` on a log scale."""
    return start_lr * (end_lr / start_lr) ** pct


def smooth(losses: Sequence[float], beta: float = BETA) -> list[float]:
    """Exponential moving average of ``losses``, debiased (so the first value is not ~0).

    >>> [round(x, 6) for x in smooth([1.0, 1.0, 1.0])]
    [1.0, 1.0, 1.0]
    """
    avg, out = 0.0, []
    for i, loss in enumerate(losses, start=1):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta**i))
    return out


def suggest_minimum(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """fastai's ``minimum``: a tenth of the LR at the lowest loss (the minimum itself
    is already too fast: the loss is about to climb)."""
    i = min(range(len(losses)), key=losses.__getitem__)
    return lrs[i] / 10


def suggest_steep(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """fastai's ``steep``: the LR where the loss falls fastest per unit of log LR
    (the left end of the steepest segment)."""
    slopes = [
        (losses[i + 1] - losses[i]) / (math.log(lrs[i + 1]) - math.log(lrs[i]))
        for i in range(len(lrs) - 1)
    ]
    return lrs[min(range(len(slopes)), key=slopes.__getitem__)]


def suggest_valley(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """fastai's ``valley``: a point in the steep part of the longest valley.

    The valley is the longest strictly decreasing subsequence of the loss curve
    (the same longest-decreasing-subsequence search as fastai: it tolerates the
    bumps of a noisy curve, which a run of consecutive decreases would not). Of
    the equally long ones, the one that starts latest is taken, so the valley
    begins where the loss starts falling for good, not somewhere on the plateau
    of tiny LRs, and it ends at the bottom of the curve. The LR two thirds of the
    way along it, in steps (a log-LR scale), is suggested: the bottom is already
    too fast, and the steep descent sits in the later middle. (fastai takes the
    middle of ``[end - length, end]``, whose start is later than the valley's
    first point whenever noise made the search skip points: on noisy curves
    that lands near two thirds of the real span.)
    """
    n = len(losses)
    length, prev = [1] * n, [-1] * n
    for i in range(n):
        for j in range(i):
            # ties go to the latest predecessor: a flat plateau is not part of the valley
            if losses[j] > losses[i] and length[j] + 1 >= length[i]:
                length[i], prev[i] = length[j] + 1, j
    end = max(range(n), key=lambda i: (length[i], -i))  # the first longest valley
    start = end
    while prev[start] != -1:
        start = prev[start]
    return lrs[start + round((end - start) * 2 / 3)]


SUGGESTIONS: dict[str, Callable[[Sequence[float], Sequence[float]], float]] = {
    "valley": suggest_valley,
    "minimum": suggest_minimum,
    "steep": suggest_steep,
}


def suggestions(lrs: Sequence[float], losses: Sequence[float], num_it: int) -> dict[str, float]:
    """All suggestions from a sweep's recorded curve, on fastai's trimmed part of it.

    As fastai, the first ``num_it // 10`` points (a smoothed loss still made of
    few batches) and the last 5 (the divergence) are left out, unless that would
    leave fewer than 3 points.
    """
    lo, hi = num_it // 10, len(losses) - 5
    if hi - lo >= 3:
        lrs, losses = lrs[lo:hi], losses[lo:hi]
    if len(losses) < 2:
        raise SnugfitError(
            f"lr_find: the loss diverged after {len(losses)} step(s), too few to suggest "
            "a learning rate; lower start_lr"
        )
    return {name: float(f(lrs, losses)) for name, f in SUGGESTIONS.items()}


# -- the result ---------------------------------------------------------------
@dataclass
class LRFindResult:
    """What `lr_find` recorded: one LR and one smoothed loss per step, and suggestions."""

    lrs: list[float]
    losses: list[float]
    suggestions: dict[str, float] = field(default_factory=dict)
    suggested: float = math.nan

    def plot(self, path="lr_find.png", skip_end: int = 5) -> Path:
        """Save the smoothed loss against the LR (log scale) as a PNG, with the
        suggestions marked; the last ``skip_end`` points (the blow-up) are left out."""
        from snugfit.callbacks.recorder import pyplot, save_figure

        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6, 4))
        n = max(len(self.lrs) - skip_end, 2)
        ax.plot(self.lrs[:n], self.losses[:n])
        for (name, lr), colour in zip(self.suggestions.items(), ("C1", "C2", "C3"), strict=False):
            i = min(range(len(self.lrs)), key=lambda j: abs(math.log(self.lrs[j] / lr)))
            ax.plot([lr], [self.losses[i]], "o", color=colour, label=f"{name}: {lr:.2e}")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss (smoothed)")
        if self.suggestions:
            ax.legend()
        return save_figure(fig, path)


# -- the sweep ----------------------------------------------------------------
def lr_find(
    learn,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_it: int = 100,
    stop_div: bool = True,
    suggest: str = "valley",
) -> LRFindResult:
    """Sweep the learning rate and suggest one; ``learn`` is left as it was.

    Step ``i`` of ``num_it`` uses ``start_lr * (end_lr / start_lr) ** (i / num_it)``
    for every layer group. Training batches are taken in order, over as many
    epochs of the training loader as ``num_it`` needs.

    Args:
        learn: the `Learner`.
        start_lr, end_lr: the range of the sweep.
        num_it: the number of optimizer steps.
        stop_div: stop once the smoothed loss exceeds 4x its minimum. A NaN or
            infinite loss always stops the sweep (and is not recorded).
        suggest: the suggestion returned as ``suggested``: "valley", "minimum" or "steep".

    Returns:
        An `LRFindResult`; ``result.plot()`` saves the curve.
    """
    if learn.dls is None:
        raise SnugfitError("lr_find: this learner has no data: it was loaded for prediction only")
    if not (0 < start_lr < end_lr and math.isfinite(end_lr)):
        raise SnugfitError(
            f"start_lr, end_lr: expected 0 < start_lr < end_lr, got {start_lr!r}, {end_lr!r}"
        )
    if isinstance(num_it, bool) or not isinstance(num_it, int) or num_it < 2:
        raise SnugfitError(f"num_it: expected an integer >= 2, got {num_it!r}")
    if suggest not in SUGGESTIONS:
        raise SnugfitError(f"suggest: expected one of {', '.join(SUGGESTIONS)}, got {suggest!r}")
    with learn.trial() as train_dl:
        lrs, losses = _sweep(learn, train_dl, start_lr, end_lr, num_it, stop_div)
    found = suggestions(lrs, losses, num_it)
    return LRFindResult(lrs, losses, found, found[suggest])


def _sweep(learn, train_dl, start_lr, end_lr, num_it, stop_div) -> tuple[list[float], list[float]]:
    """The sweep's steps, through the learner's own training step; the curve."""
    n_groups = len(learn.groups)
    lrs, losses = [], []
    avg, best = 0.0, math.inf
    step = 0
    while step < num_it:
        batches = iter(train_dl)  # one epoch of the loader
        try:
            empty = True
            for xb, yb in batches:
                empty = False
                lr = exp_lr(start_lr, end_lr, step / num_it)
                learn.set_hypers([lr] * n_groups, None)
                loss = learn.train_step(
                    learn.prepare_input(xb), yb
                ).item()  # a host sync: we decide
                step += 1
                if learn.stop_requested():  # Ctrl-C in a recipe: stop, as a fit would
                    learn.events.emit("interrupt", during="lr_find", step=step)
                    raise KeyboardInterrupt  # the trial puts the learner back
                if not math.isfinite(loss):
                    return lrs, losses
                avg = BETA * avg + (1 - BETA) * loss
                smoothed = avg / (1 - BETA**step)  # debiased: see `smooth`
                lrs.append(lr)
                losses.append(smoothed)
                best = min(best, smoothed)
                if (stop_div and smoothed > DIVERGE * best) or step >= num_it:
                    return lrs, losses
        finally:
            if hasattr(batches, "close"):
                batches.close()  # a loader left mid-epoch frees its workers now
        if empty:
            raise SnugfitError("lr_find: the training set yielded no batches")
    return lrs, losses


class TrainingSnapshot:
    """What trial training steps change, copied to host memory (the device keeps its
    memory for them) and put back exactly by `restore`: weights and buffers,
    optimizer state and hyper-parameters, which parameters train, module modes, the
    recorder's history, the loader's epoch counter and the random generators."""

    def __init__(self, model, opt, scaler, recorder, train_dl):
        self.model_obj, self.opt_obj, self.recorder, self.train_dl = model, opt, recorder, train_dl
        self.model = _clone_to_cpu(model.state_dict())
        self.opt = _clone_to_cpu(opt.state_dict())
        self.scaler = scaler.state_dict() if scaler is not None else None
        self.requires_grad = [p.requires_grad for p in model.parameters()]
        self.training = [m.training for m in model.modules()]
        self.history = recorder.snapshot()
        self.dl_epoch = getattr(train_dl, "epoch", None)
        self.cpu_rng = torch.get_rng_state()
        param = next(model.parameters(), None)
        self.device = param.device if param is not None else torch.device("cpu")
        cuda = self.device.type == "cuda"
        self.cuda_rng = torch.cuda.get_rng_state(self.device) if cuda else None

    def restore(self, scaler=None) -> None:
        """Put everything back; ``scaler`` (the learner's GradScaler, when its precision
        did not change meanwhile) gets its state back too."""
        model = self.model_obj
        with torch.no_grad():
            model.load_state_dict(self.model)  # copies into the same tensors
        self.opt_obj.load_state_dict(self.opt)  # replaces the state: steps and moments too
        if scaler is not None and self.scaler is not None:
            scaler.load_state_dict(self.scaler)
        for p, rg in zip(model.parameters(), self.requires_grad, strict=True):
            p.requires_grad_(rg)
        for m, training in zip(model.modules(), self.training, strict=True):
            m.training = training
        self.recorder.restore(self.history)
        if self.dl_epoch is not None:
            self.train_dl.epoch = self.dl_epoch
        torch.set_rng_state(self.cpu_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state(self.cuda_rng, self.device)


def _clone_to_cpu(obj):
    """A deep copy of a (nested) state dict with every tensor copied to the host."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _clone_to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_clone_to_cpu(v) for v in obj)
    return copy.deepcopy(obj)
