"""The training calls of a learner: fastai's schedules and recipes over the one fit loop.

`Fitting` is the part of `snugfit.train.learner.Learner` that turns a training call
into the loop's ``_fit(n_epoch, scheduler, cbs)``: a constant rate (`fit`), one-cycle,
flat-then-cosine, SGDR (schedules are pure functions: `snugfit.train.schedules`),
``fine_tune`` and ``auto_fit`` (`snugfit.train.recipes`), and the learning-rate
finder, whose sweep runs in a `trial` that is undone afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from functools import partial

from snugfit.callbacks import Callback, CycleSnapshots, ParamScheduler
from snugfit.errors import SnugfitError
from snugfit.train import head_solve, recipes
from snugfit.train import lr_find as lr_finder
from snugfit.train.lr_find import TrainingSnapshot
from snugfit.train.optim import resolve_lrs
from snugfit.train.resume import resumable
from snugfit.train.schedules import (
    combine,
    constant,
    cos_anneal,
    one_cycle,
    one_cycle_mom,
    sgdr,
    sgdr_epochs,
)


class Fitting:
    """Training calls of a Learner (see the module docstring)."""

    def _lrs(self, lr) -> list[float]:
        return resolve_lrs(lr, len(self.groups))

    @resumable
    def fit(self, n_epoch: int, lr=1e-3, cbs: Sequence[Callback] = ()) -> None:
        """Train ``n_epoch`` epochs at a constant learning rate (float, slice or list)."""
        lrs = self._lrs(lr)
        self._fit(n_epoch, ParamScheduler([constant(x) for x in lrs]), cbs)

    @resumable
    def fit_one_cycle(
        self,
        n_epoch: int,
        lr_max=None,
        div: float = 25.0,
        div_final: float = 1e5,
        pct_start: float = 0.25,
        moms=(0.95, 0.85, 0.95),
        cbs: Sequence[Callback] = (),
    ) -> None:
        """fastai's one-cycle policy: LR warms up to ``lr_max`` then anneals (cosine)."""
        lrs = self._lrs(1e-3 if lr_max is None else lr_max)
        sched = partial(one_cycle, div=div, div_final=div_final, pct_start=pct_start)
        lr_scheds = [partial(sched, lr_max=x) for x in lrs]
        mom_sched = partial(one_cycle_mom, moms=moms, pct_start=pct_start) if moms else None
        self._fit(n_epoch, ParamScheduler(lr_scheds, mom_sched), cbs)

    @resumable
    def fit_flat_cos(self, n_epoch: int, lr=1e-3, pct_start: float = 0.75, cbs=()) -> None:
        """Flat learning rate, then cosine annealing to zero over the last part."""
        lr_scheds = [
            combine([pct_start, 1 - pct_start], [constant(x), partial(cos_anneal, x, 0.0)])
            for x in self._lrs(lr)
        ]
        self._fit(n_epoch, ParamScheduler(lr_scheds), cbs)

    @resumable
    def fit_sgdr(
        self,
        n_cycles: int,
        cycle_len: int,
        lr_max=None,
        cycle_mult: int = 2,
        snapshot_dir=None,
        cbs: Sequence[Callback] = (),
    ) -> None:
        """SGD with warm restarts: ``n_cycles`` cosine cycles, each ``cycle_mult`` times
        longer than the last, starting with a short warm-up (see `schedules.sgdr`).
        With ``snapshot_dir``, the weights at the end of each cycle are saved there."""
        n_epoch = sgdr_epochs(n_cycles, cycle_len, cycle_mult)
        lrs = self._lrs(1e-3 if lr_max is None else lr_max)
        lr_scheds = [
            partial(sgdr, lr_max=x, n_cycles=n_cycles, cycle_len=cycle_len, cycle_mult=cycle_mult)
            for x in lrs
        ]
        extra = (
            [CycleSnapshots(snapshot_dir, n_cycles, cycle_len, cycle_mult)] if snapshot_dir else []
        )
        self._fit(n_epoch, ParamScheduler(lr_scheds), [*extra, *cbs])

    def lr_find(self, start_lr=1e-7, end_lr=10.0, num_it=100, stop_div=True, suggest="valley"):
        """fastai's learning-rate finder; the model, optimizer and BN buffers are
        restored afterwards. Returns the suggestions (see `snugfit.train.lr_find`)."""
        return lr_finder.lr_find(self, start_lr, end_lr, num_it, stop_div, suggest)

    def solve_head(self, wd: float = 1e-2) -> float:
        """Fit the head to its optimum on the frozen body's stored features: L2-
        regularised logistic regression by L-BFGS (`snugfit.train.head_solve`).
        The body must be frozen and the head one Linear layer; no epoch is counted.
        Returns the solution's training loss (penalty included)."""
        if not self.can_solve_head:
            raise SnugfitError("solve_head: needs a classifier whose head is one Linear layer "
                               "on the body's features (not a segmentation decoder, not under "
                               "torchrun)")  # fmt: skip
        if not self.body_frozen:
            raise SnugfitError("solve_head: the body must be frozen (learn.freeze()): the "
                               "head is solved on the frozen body's features")  # fmt: skip
        head = self.model.get_classifier()
        feats, targs = self.precompute_features()
        weight, bias, loss = head_solve.solve_linear(
            feats, targs, head.out_features, self.multi_label, wd, self.device
        )
        head_solve.write_linear(head, weight, bias)
        self.events.emit(
            "head_solved", wd=wd, train_loss=loss, images=len(targs), size=self.dls.size
        )
        return loss

    @resumable
    def auto_fit(self, epochs: int | None = None, **kwargs) -> None:
        """The automated transfer-learning checklist (see `snugfit.train.recipes`);
        ``epochs`` (of the unfrozen phase) None: 2 for a classifier, 8 for a
        segmentation model (`recipe_defaults.DEFAULTS`)."""
        recipes.auto_fit(self, epochs, **kwargs)

    @resumable
    def fine_tune(
        self,
        epochs: int,
        base_lr: float = 2e-3,
        freeze_epochs: int = 1,
        lr_mult: float = 100,
        pct_start: float = 0.3,
        div: float = 5.0,
        cbs: Sequence[Callback] = (),
    ) -> None:
        """fastai's transfer-learning recipe.

        Train the head for ``freeze_epochs`` (one-cycle, ``pct_start=0.99``), then
        halve ``base_lr``, unfreeze, and train everything for ``epochs`` with
        discriminative rates from ``base_lr / lr_mult`` (first group) to ``base_lr``.
        """
        recipes.fine_tune(self, epochs, base_lr, freeze_epochs, lr_mult, pct_start, div, cbs)

    @contextlib.contextmanager
    def trial(self):
        """Training steps to be undone (lr_find's sweep): yields the training batches
        (images, or precomputed features through the head), then puts back weights,
        optimizer, GradScaler, trainable flags, module modes, history, the loader's
        epoch and the random generators. Memory settings an out-of-memory fallback
        lowered meanwhile are kept: training would hit the same wall."""
        self.replan_if_needed()  # the memory settings the fit would use
        saved = TrainingSnapshot(self.model, self.opt, self.scaler, self.recorder, self.dls.train)
        precision = self.precision
        try:
            self.train_mode()
            train_dl, _, self.net = self.loaders()
            yield train_dl
        finally:
            self.net = self.model
            self.opt.zero_grad(set_to_none=True)  # a step cut short leaves gradients
            self.loss_mb = None
            saved.restore(self.scaler if self.precision == precision else None)
