"""An exponential moving average (EMA) of the weights: validated, kept and saved.

After every optimizer step the average moves toward the weights::

    ema = d * ema + (1 - d) * w          (torch.lerp: exact while w does not change)

for each floating-point parameter that trains and each floating-point buffer
(BatchNorm's running statistics). Integer buffers (``num_batches_tracked``) are
not averaged: the model's own value is the average's, as timm copies them. With
``warmup`` the decay of update ``t`` (0 for the first) is ``min(decay, (1 + t) /
(10 + t))`` (`ema_decay`): the first updates follow the weights closely, so the
average does not drag the starting weights along for thousands of steps.

Equivalents: timm's ``train.py --model-ema --model-ema-decay 0.9998``
(``timm.utils.ModelEmaV3``, which also validates the average; its opt-in
``--model-ema-warmup`` ramps the decay as ``1 - (1 + t) ** (-2/3)`` instead). The
warm-up here is TensorFlow's ``tf.train.ExponentialMovingAverage(decay,
num_updates=t)``. fastai has no EMA in its core library (``fastai.callback.training``
has none); fastxtend's ``EMACallback`` is the same callback: averaged every step,
validated, the model's weights replaced by the average when training ends.

What `EMA` does with the average, fit by fit (each phase of ``fine_tune`` and
``auto_fit`` is a fit and averages its own steps, starting from the weights it
starts with):

- **validated**: at ``before_validate`` the model gets the average, so the
  recorded ``valid_loss`` and metrics are the average's. It keeps it through the
  epoch's ``after_epoch`` callbacks that run before this one (order 85): the
  Recorder, EarlyStopping, SaveBest and CycleSnapshots see and save the weights
  that were validated. Then the training weights come back, and SaveCheckpoint
  (order 90) saves them with the average. A callback that writes checkpoints
  must also run after this one.
- **kept**: after the fit's last epoch (or the one EarlyStopping stops at) the
  model keeps the average, so ``learn.save``, ``learn.validate``, predictions and
  auto_fit's comparison of phases use it. When a fit stops on an error
  (non-finite loss, Ctrl-C, out of memory) the average is dropped and the model
  keeps the weights the loop left: the training weights, or the last good ones
  the non-finite guard restored (the average may hold the bad step's NaN). The
  resumable checkpoint still holds the average.
- **saved**: the average is in ``learn.recipe_tensors`` (``ema.<name>``) and the
  number of updates in ``learn.recipe_state`` (``ema_updates``), which
  checkpoints carry: a resumed fit continues the same average, bit for bit.
  Both are cleared when the fit ends, so the next fit starts afresh.

Frozen parameters do not change, so their average is themselves: they are not
copied (a parameter unfrozen during a fit is averaged from the epoch it trains
in). With precomputed features only the head runs, and the head's parameters are
the model's, so they are averaged as usual. Steps outside a fit (``lr_find``'s
sweep) are not averaged. Under torchrun every rank holds the same weights after
each step, so every rank keeps the same average: nothing is communicated.

Memory: one more fp32 copy of the trainable weights (and float buffers) on the
model's device. The memory plan (``learn.planner``) does not count it; when it
does not fit, out-of-memory recovery lowers the settings as for anything else.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from snugfit.callbacks import Callback
from snugfit.errors import SnugfitError

log = logging.getLogger("snugfit")

PREFIX = "ema."  # of the average's tensors in ``learn.recipe_tensors``
UPDATES = "ema_updates"  # the update count in ``learn.recipe_state``


def ema_decay(decay: float, updates: int, warmup: bool = True) -> float:
    """The decay of the update that follows ``updates`` earlier ones.

    >>> ema_decay(0.999, 0), ema_decay(0.999, 10), ema_decay(0.999, 10_000)
    (0.1, 0.55, 0.999)
    >>> ema_decay(0.999, 0, warmup=False)
    0.999
    """
    if not warmup:
        return decay
    return min(decay, (1 + updates) / (10 + updates))


def check_decay(name: str, value) -> float:
    """``value`` if it is a number strictly between 0 and 1; else a `SnugfitError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise SnugfitError(
            f"{name}: expected a decay between 0 and 1 (exclusive), e.g. 0.999, got {value!r}"
        )
    return float(value)


class EMA(Callback):
    """Average the weights after every step; validate and keep the average (module docstring).

    Args:
        decay: how much of the average each update keeps (timm's default 0.9998 suits
            long runs; fine-tuning for a few hundred steps wants less, e.g. 0.99-0.999).
        warmup: ramp the decay up as ``(1 + t) / (10 + t)`` over the first updates.

    Attributes:
        ema: the average, by state-dict name (fp32, on the model's device); None
            outside a fit.
        updates: the updates made in this fit.
    """

    order = 85  # after the callbacks that judge or save the validated weights, before checkpoints

    def __init__(self, decay: float = 0.999, warmup: bool = True):
        self.decay = check_decay("decay", decay)
        self.warmup = bool(warmup)
        self._reset()

    def _reset(self) -> None:
        self.ema: dict[str, torch.Tensor] | None = None
        self.updates = 0
        self._live: dict[str, torch.Tensor] = {}  # the model's own tensors, by name
        self._stash: dict[str, torch.Tensor] = {}  # training weights not in fp32, while swapped
        self._swapped = False  # the model holds the average now
        self._same_dtype: tuple[list, list] = ([], [])  # (averages, weights) held in fp32
        self._other_dtype: list[str] = []  # names of weights held in another float type

    # -- the fit's events ------------------------------------------------------
    def before_fit(self, learn) -> None:
        self._reset()
        self._live = _float_tensors(learn.model)
        self.ema = {}
        if UPDATES in learn.recipe_state:  # resumed mid-fit: the checkpoint's average
            self.updates = learn.recipe_state[UPDATES]
            saved = {k[len(PREFIX) :]: v for k, v in learn.recipe_tensors.items()
                     if k.startswith(PREFIX)}  # fmt: skip
            unknown = sorted(saved.keys() - self._live.keys())
            if unknown:
                raise SnugfitError(
                    f"EMA: the checkpoint averages weights this model does not have: "
                    f"{', '.join(unknown[:3])}"
                )
            for k, v in saved.items():
                self.ema[k] = _fp32_copy(self._live[k]).copy_(v)
        self._publish(learn)

    def before_train(self, learn) -> None:
        """Start averaging what trains from now on (a fit's first epoch: everything)."""
        if self.ema is None:
            return
        new = {
            k: _fp32_copy(t)
            for k, t in self._live.items()
            if k not in self.ema and not (isinstance(t, nn.Parameter) and not t.requires_grad)
        }
        if new:
            self.ema.update(new)
            self._publish(learn)

    @torch.no_grad()
    def after_step(self, learn) -> None:
        if self.ema is None:
            return  # not in a fit: lr_find's sweep
        weight = 1.0 - ema_decay(self.decay, self.updates, self.warmup)
        averages, weights = self._same_dtype
        if averages:
            torch._foreach_lerp_(averages, weights, weight)
        for k in self._other_dtype:  # weights not held in fp32: averaged in fp32
            self.ema[k].lerp_(self._live[k].float(), weight)
        self.updates += 1
        learn.recipe_state[UPDATES] = self.updates

    def before_validate(self, learn) -> None:
        if self.ema is not None and not self._swapped:
            self._swap()

    def after_epoch(self, learn) -> None:
        if self.ema is None:
            return
        if learn.stop_training or learn.epoch + 1 >= learn.n_epoch:
            self._keep(learn)  # the fit ends here: the model keeps the average
        elif self._swapped:
            self._swap()  # the training weights train on

    def after_fit(self, learn) -> None:
        if self.ema is None:  # kept at the last epoch already (or never started)
            self._end(learn, kept=None)
        elif learn.stop_training:  # stopped by a callback that runs after this one
            self._keep(learn)
        else:  # an error ended the fit: the loop's weights stay (module docstring)
            if self._swapped:
                self._swap()
            self._end(learn, kept=False)

    # -- the average's life ----------------------------------------------------
    def _publish(self, learn) -> None:
        """Hand the average to the checkpoints; group it for the updates."""
        learn.recipe_tensors.update({PREFIX + k: v for k, v in self.ema.items()})
        learn.recipe_state[UPDATES] = self.updates
        same = [k for k in self.ema if self._live[k].dtype == torch.float32]
        self._same_dtype = ([self.ema[k] for k in same], [self._live[k] for k in same])
        self._other_dtype = [k for k in self.ema if self._live[k].dtype != torch.float32]

    @torch.no_grad()
    def _swap(self) -> None:
        """Exchange the model's weights and the average, in place (no second copy)."""
        for k, average in self.ema.items():
            t = self._live[k]
            if t.dtype == average.dtype:
                held = t.clone()
                t.copy_(average)
                average.copy_(held)
            elif not self._swapped:
                self._stash[k] = t.clone()
                t.copy_(average)
            else:
                t.copy_(self._stash.pop(k))
        self._swapped = not self._swapped

    def _keep(self, learn) -> None:
        if not self._swapped:
            self._swap()
        self._end(learn, kept=True)

    def _end(self, learn, kept: bool | None) -> None:
        """Drop the average (and the training weights it was exchanged with)."""
        if kept is not None:
            learn.events.emit("ema", fit=learn.fit_index, updates=self.updates, kept=kept)
            if kept:
                log.info(f"EMA: the model keeps the average of {self.updates} steps")
        for k in [k for k in learn.recipe_tensors if k.startswith(PREFIX)]:
            del learn.recipe_tensors[k]
        learn.recipe_state.pop(UPDATES, None)
        self._reset()


def _float_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's floating-point parameters and buffers by state-dict name (shared
    ones once)."""
    named = [*model.named_parameters(), *model.named_buffers()]
    return {k: t for k, t in named if t.is_floating_point()}


def _fp32_copy(t: torch.Tensor) -> torch.Tensor:
    """A fp32 copy on the same device, in the same memory format."""
    return t.detach().to(torch.float32, copy=True)
