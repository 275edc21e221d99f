"""The Learner: a model, its data, an optimizer over layer groups, and the fit loop.

The unit of work is one *optimizer step over one batch*. A batch may be split
into micro-batches whose losses are weighted by their share of the batch, so
the accumulated gradient equals the full-batch gradient; the memory planner
chooses the micro-batch size. The whole loop is `Learner._fit` and `_step`.
What the loop calls on the side lives in its own module, the methods here being
its entry points: `snugfit.planning` (the memory plan), `snugfit.resume` (fit
numbering, resuming), `snugfit.oom` (recovery), `snugfit.inference` (evaluation,
prediction), `snugfit.recipe` (fine_tune, auto_fit).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

from snugfit import distributed, memory, models
from snugfit.callbacks import Callback, CycleSnapshots, ParamScheduler, ProgressCallback, Recorder
from snugfit.callbacks.auto_precision import AutoPrecision
from snugfit.errors import NonFiniteLoss, SnugfitError, check_optional_count, first_line
from snugfit.events import EventLog
from snugfit.infer import evaluate as inference
from snugfit.infer import tta
from snugfit.memory.oom import StepSnapshot, is_oom, recover_from_oom
from snugfit.memory.precision import (
    autocast,
    check_precision,
    cpu_has_native_bf16,
    make_scaler,
    resolve_precision,
)
from snugfit.saving import checkpoint
from snugfit.saving import model_files as export
from snugfit.tasks.metrics import MULTI_LABEL_DEFAULTS, metric_name, resolve_metric
from snugfit.train import lr_find, planning, resume
from snugfit.train import recipes as recipe
from snugfit.train.interrupt import DeferredInterrupt
from snugfit.train.nonfinite import NonFiniteGuard
from snugfit.train.optim import (
    decoupled_weight_decay,
    grads_finite,
    make_optimizer,
    param_groups,
    resolve_lrs,
)
from snugfit.train.precompute import feature_loaders
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

log = logging.getLogger("snugfit")


class Learner:
    """Train ``model`` on ``dls``.

    Args:
        dls: an `ImageDataLoaders` (or None for a learner that only predicts).
        model: the network; it is moved to ``dls.device``.
        loss_func: defaults to cross-entropy; for multi-label data (``dls.multi_label``)
            to ``BCEWithLogitsLoss`` (sigmoid outputs, the mean over samples and classes,
            as fastai's ``BCEWithLogitsLossFlat``).
        opt: "adamw" (default), "sgd" or "rmsprop".
        wd: decoupled weight decay (none on norm layers and biases).
        metrics: callables ``(preds, targs) -> 0-d tensor`` or names ("accuracy";
            multi-label: "accuracy_multi", "f1_samples").
        cbs: extra callbacks.
        precision: "auto" (default), "fp32", "bf16" or "fp16" (see `snugfit.precision`).
        micro_bs: split each batch into micro-batches of this size (None: whole batch).
            The batch size of the data stays the *effective* batch: what the optimizer
            and the schedule see.
        accumulate: alternatively, the number of micro-batches per batch.
        checkpointing: activation checkpointing (recompute activations in backward).
        memory_budget: plan micro-batch, precision and checkpointing to fit this much
            device memory ("8GB", "8GiB", "7500MB", or a fraction of the card such
            as 0.5), re-planned at every phase change; on CUDA it is also enforced
            with ``torch.cuda.set_per_process_memory_fraction``. None: on CUDA, plan
            for the whole card; on CPU, no plan.
        bn_freeze_below: when the micro-batch is smaller than this, BatchNorm layers
            use and keep their running statistics (eval mode): batch statistics of
            a few samples are noisy and differ from the effective batch's. 0 opts out.
        oom_recovery: on out-of-memory, retry the same batch with smaller settings.
        max_nonfinite: stop training when this many losses in a row are NaN or
            infinite in fp16 (its GradScaler skips isolated ones; fp32 and bf16 stop
            at the first), with the last good weights restored (see
            `snugfit.nonfinite`). None: no checks.
        channels_last: NHWC memory format for model and inputs; None picks it for
            CNNs (measured: 1.6x faster training steps for EfficientNet-Lite0 on CPU).
        precompute: while only the head trains, run the frozen body once over the
            (un-augmented) images and train the head on the stored features
            (see `snugfit.precompute`). Set ``learn.precompute = False`` to train
            the head with augmentation again.
        compile: compile the model's forward with ``torch.compile`` (in place, so
            weights and state-dict keys are unchanged); the first steps are slow.
        sync_bn: under torchrun, BatchNorm statistics over the whole global batch
            (SyncBatchNorm, CUDA only); it turns OOM recovery off, as the layers
            communicate inside forward and backward (see `snugfit.distributed`).
        arch: the timm name of the architecture, kept for saving.
        infer: inference settings (vocab, size, crop_pct, mean, std; multi_label and
            threshold) when ``dls`` is None.

    Attributes:
        multi_label: the model scores each class on its own (sigmoid), from
            ``dls.multi_label`` (or ``infer``).
        threshold: multi-label: `predict` returns the classes whose probability is
            above it (0.5 unless ``infer`` says otherwise); saved with the model.
    """

    def __init__(
        self,
        dls,
        model: nn.Module,
        loss_func: Callable | None = None,
        opt: str = "adamw",
        wd: float = 0.01,
        metrics: Sequence = (),
        cbs: Sequence[Callback] = (),
        precision: str = "auto",
        micro_bs: int | None = None,
        accumulate: int | None = None,
        checkpointing: bool = False,
        memory_budget: str | int | float | None = None,
        bn_freeze_below: int = 16,
        oom_recovery: bool = True,
        max_nonfinite: int | None = 3,
        channels_last: bool | None = None,
        precompute: bool = False,
        compile: bool = False,
        sync_bn: bool = False,
        arch: str | None = None,
        infer: dict | None = None,
        console=None,
    ):
        self.dls = dls
        self.device = dls.device if dls is not None else torch.device("cpu")
        # Under torchrun: join the job; the loop then syncs, shards and reduces.
        self.distributed = dls is not None and distributed.setup(self.device)
        self.sync_bn = sync_bn and self.distributed
        if self.sync_bn:
            if self.device.type != "cuda":
                raise SnugfitError("sync_bn: SyncBatchNorm needs CUDA devices")
            model = distributed.convert_sync_bn(model)
        self.channels_last = models.is_cnn(model) if channels_last is None else channels_last
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format)
        if compile:
            self.model.compile()  # nn.Module.compile: in place, keys unchanged
        self.net = self.model  # what the loop calls: the model, or only its head
        self.precompute = precompute
        if dls is not None:
            self.multi_label = bool(getattr(dls, "multi_label", False))
        else:
            self.multi_label = bool((infer or {}).get("multi_label", False))
        self.threshold = float((infer or {}).get("threshold", 0.5))
        default_loss = nn.BCEWithLogitsLoss if self.multi_label else nn.CrossEntropyLoss
        self.loss_func = loss_func or default_loss()
        self.metrics = [resolve_metric(m, self.multi_label) for m in metrics]
        self.groups = models.layer_groups(model)
        self.group_names = models.group_names(model)
        self.wd = wd
        self.opt_name = opt
        self.opt = make_optimizer(
            opt, param_groups(self.groups, models.norm_and_bias_param_names(model), wd)
        )
        self.micro_bs = check_optional_count("micro_bs", micro_bs)
        self.accumulate = check_optional_count("accumulate", accumulate)
        self.checkpointing = False
        if checkpointing:
            self.set_checkpointing(True)
        self.precision_request = check_precision(precision)
        self._set_precision(resolve_precision(precision, self.device))
        self.bn_freeze_below = bn_freeze_below
        self.oom_recovery = oom_recovery and not self.sync_bn
        self.nonfinite = NonFiniteGuard(check_optional_count("max_nonfinite", max_nonfinite))
        self.oom_events: list[dict] = []
        self.events = EventLog()  # phases, plans, OOMs, stops (see `snugfit.events`)
        self.eval_bs: int | None = None
        self.memory_budget = memory_budget
        self.memory_plan = None
        self._plan_key = None
        self._bn_note = None
        if memory_budget is not None:
            memory.enforce_budget(memory_budget, self.device)
        self.arch = arch
        self._infer = infer
        self.console = console or Console()
        if not distributed.is_main():
            self.console = Console(quiet=True)  # rank 0 prints for all
        if dls is not None and hasattr(dls, "console"):
            dls.console = self.console  # one console: the caching bar nests in fit's bar
        self.recorder = Recorder()
        self.cbs: list = [self.recorder, ProgressCallback(self.console), *cbs]
        if precision == "auto" and self.device.type == "cpu" and cpu_has_native_bf16():
            self.cbs.insert(0, AutoPrecision())
        self.frozen_to = 0
        self.epoch = self.iter = self.train_iter = 0
        self._recipe_depth, self._fit_index, self._resume_at = 0, 0, None
        self.recipe_state: dict = {}  # decisions a recipe made (LRs), kept in checkpoints
        self.recipe_tensors: dict[str, torch.Tensor] = {}  # weights it keeps, likewise
        self._interrupt = DeferredInterrupt()
        self._stop_agreed = False  # under torchrun: some rank was asked to stop (Ctrl-C)
        self.interrupted = False  # Ctrl-C was pressed: training stops after this event

    # -- properties the loop and callbacks read ------------------------------
    @property
    def metric_names(self) -> list[str]:
        return [metric_name(m) for m in self.metrics]

    @property
    def infer_config(self) -> dict:
        """What predicting needs without training data: classes, image transform and,
        for multi-label models, the threshold."""
        return inference.infer_config(self)

    # -- freezing -----------------------------------------------------------
    def freeze_to(self, n: int) -> None:
        """Freeze layer groups ``[:n]``; the groups from ``n`` on train."""
        self.frozen_to = models.freeze_groups(self.groups, n)
        self.events.emit("freeze", frozen_to=self.frozen_to, groups=len(self.groups))

    def freeze(self) -> None:
        """Train only the head (the last layer group)."""
        self.freeze_to(-1)

    def unfreeze(self) -> None:
        self.freeze_to(0)

    def _train_mode(self) -> None:
        # Frozen BatchNorm layers go to eval mode: their running statistics stay
        # the pretrained ones, and nothing of the frozen body needs a graph.
        # Below `bn_freeze_below` samples per micro-batch all BN layers do, since
        # statistics of a few samples would make micro-batches differ from one batch.
        self.model.train()
        micro = self._micro(-(-self.dls.bs // distributed.world_size()))  # torchrun: a shard
        small = bool(self.bn_freeze_below) and micro < self.bn_freeze_below
        trainable_bn = models.batchnorm_to_eval(self.model, everywhere=small)
        note = (micro, self.bn_freeze_below) if small and trainable_bn else None
        if note and note != self._bn_note:
            log.info(
                f"micro-batch {note[0]} < bn_freeze_below={note[1]}: BatchNorm running "
                "statistics are frozen (eval mode); pass bn_freeze_below=0 to keep them training"
            )
        self._bn_note = note

    # -- memory: precision, micro-batches, checkpointing, plan ----------------
    def _micro(self, n: int) -> int:
        """The micro-batch size for a batch of ``n`` samples."""
        if self.micro_bs:
            return min(self.micro_bs, n)
        if self.accumulate:
            return math.ceil(n / self.accumulate)
        return n

    def _set_precision(self, precision: str) -> None:
        self.precision = precision
        self.scaler = make_scaler(precision, self.device)

    def _request_precision(self, precision: str) -> Learner:
        self.precision_request = precision  # what plans keep to (no "auto" choice)
        self._set_precision(precision)
        return self

    def to_fp16(self) -> Learner:
        """Mixed precision with float16 and a GradScaler (fastai's name)."""
        return self._request_precision("fp16")

    def to_bf16(self) -> Learner:
        """Mixed precision with bfloat16 (no loss scaling needed)."""
        return self._request_precision("bf16")

    def to_fp32(self) -> Learner:
        return self._request_precision("fp32")

    def set_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing through timm (or a generic fallback over stages)."""
        how = models.set_grad_checkpointing(self.model, enable)
        self.checkpointing = enable and how != "none"

    def plan(
        self,
        budget=None,
        bs: int | None = None,
        size: int | None = None,
        apply: bool = True,
        device_type: str | None = None,
    ):
        """Plan precision, micro-batch and checkpointing to fit ``budget``; print the table.

        The plan is computed for the model as it is now (frozen or not), before
        training: exact parameter, gradient and optimizer bytes, activations
        measured on the real model at micro-batch 1 and 2 and extrapolated, and a
        margin. With ``apply`` the fastest candidate that fits is used. Under
        torchrun ``bs`` is the global batch and the plan is for one rank's shard.
        ``device_type="cuda"`` on a machine without that GPU makes it a what-if: the
        probe runs on this device, the budget is the GPU's.
        """
        return planning.plan(self, budget, bs, size, apply, device_type)

    def _maybe_replan(self) -> None:
        planning.maybe_replan(self)

    # -- fitting --------------------------------------------------------------
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
        restored afterwards. Returns the suggestions (see `snugfit.lr_find`)."""
        return lr_find.lr_find(self, start_lr, end_lr, num_it, stop_div, suggest)

    @resumable
    def auto_fit(self, epochs: int = 2, **kwargs) -> None:
        """The automated transfer-learning checklist (see `snugfit.recipe`)."""
        recipe.auto_fit(self, epochs, **kwargs)

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
        recipe.fine_tune(self, epochs, base_lr, freeze_epochs, lr_mult, pct_start, div, cbs)

    # -- the loop -------------------------------------------------------------
    def position(self, after_batch: bool) -> dict:
        """Where training stands: the next (fit, epoch, batch) to run."""
        return resume.position(self, after_batch)

    def _lrs(self, lr) -> list[float]:
        return resolve_lrs(lr, len(self.groups))

    def _event(self, name: str) -> None:
        for cb in self.cbs:
            getattr(cb, name)(self)

    def _fit(self, n_epoch: int, scheduler: Callback, cbs: Sequence[Callback] = ()) -> None:
        """The training loop; the event order is documented in `snugfit.callbacks`."""
        if self.dls is None:
            raise SnugfitError("this learner has no data: it was loaded for prediction only")
        if not isinstance(n_epoch, int) or n_epoch < 1:
            raise SnugfitError(f"n_epoch: expected a positive integer, got {n_epoch!r}")
        self.fit_index, self._fit_index = self._fit_index, self._fit_index + 1
        start_epoch, start_iter = resume.resume_point(self)
        if start_epoch is None:
            return  # done before the checkpoint we resume from
        added = [scheduler, *cbs]
        self.cbs.extend(added)
        self.cbs.sort(key=lambda c: c.order)  # stable: equal orders keep insertion order
        self.train_dl, self.valid_dl, self.net = self._loaders()
        self.n_epoch, self.n_iter = n_epoch, len(self.train_dl)
        self.total_iters = n_epoch * self.n_iter
        self.train_iter = start_epoch * self.n_iter + start_iter
        self.stop_training = False
        self.events.emit(
            "fit_start",
            fit=self.fit_index,
            epochs=n_epoch,
            start_epoch=start_epoch,
            frozen_to=self.frozen_to,
            size=self.dls.size,
            bs=self.dls.bs,
            precompute=self.net is not self.model,
        )
        self._maybe_replan()  # unfreezing or a new size moves memory: plan again
        resume.rewind_rng(self)  # in the fit resumed from: as at the checkpoint
        try:
            self.nonfinite.start(self)  # a host copy of the weights to fall back to
            self._event("before_fit")
            for self.epoch in range(start_epoch, n_epoch):
                self._event("before_epoch")
                self._train_mode()
                self._event("before_train")
                skip, start_iter = start_iter, 0
                for i, (xb, yb) in enumerate(self._train_batches(skip), start=skip):
                    self.iter, self.xb, self.yb = i, self._input(xb), yb
                    self.pct_train = self.train_iter / self.total_iters
                    self._event("before_batch")
                    self.loss = self._step(self.xb, self.yb)
                    self.nonfinite.check(self)  # NaN/inf: restore the last good weights, stop
                    # callbacks may save on it; under torchrun every rank stops at the same step
                    self.interrupted = (
                        self._stop_agreed if self.distributed else self._interrupt.requested
                    )
                    self._event("after_batch")
                    self.train_iter += 1
                    if self.interrupted:
                        raise KeyboardInterrupt  # Ctrl-C, acted on after a whole step
                self.nonfinite.end_epoch(self)
                self._event("after_train")
                self._event("before_validate")
                self.valid_loss, self.metric_values = self._validate(self.valid_dl)
                self._event("after_validate")
                self.interrupted = self._interrupt.requested
                if self.distributed:
                    self.interrupted = distributed.any_rank(self.interrupted)
                self._event("after_epoch")
                if self.interrupted:
                    raise KeyboardInterrupt
                if self.stop_training:
                    break
        except NonFiniteLoss as e:
            at = vars(e.where) if e.where is not None else None
            self.events.emit("nonfinite", message=str(e), value=e.value, at=at)
            raise
        except KeyboardInterrupt:
            self.events.emit("interrupt", fit=self.fit_index, epoch=self.epoch, batch=self.iter)
            raise
        finally:
            self._event("after_fit")
            self.events.emit("fit_end", fit=self.fit_index, early_stop=self.stop_training)
            self.net = self.model
            for cb in added:
                self.cbs.remove(cb)

    def _loaders(self):
        """Training and validation batches, and the module they go through: the
        images and the whole model, or precomputed features and only the head."""
        if self.distributed:
            # Every rank trains on its shard of each batch (precomputed features are
            # not sharded: the head trains on images), through DDP.
            return self.dls.train, self.dls.valid, distributed.wrap(self.model, self.device)
        if self.precompute and self.frozen_to == len(self.groups) - 1:
            train, valid = feature_loaders(self)
            return train, valid, self.model.get_classifier()
        return self.dls.train, self.dls.valid, self.model

    def _train_batches(self, skip: int):
        """The training batches of one epoch, from batch ``skip`` on (for resuming)."""
        dl = self.train_dl
        if getattr(dl, "per_fit_epochs", False):
            dl.epoch = self.epoch  # its order depends on the fit's epoch alone
        if skip and hasattr(dl, "iter_from"):
            return dl.iter_from(skip)  # skips without decoding the skipped images
        return itertools.islice(iter(dl), skip, None)

    def _step(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """One optimizer step over one batch; returns the batch's mean loss (on device).

        The batch is split into micro-batches; each loss is weighted by its share of
        the samples, so the summed gradients equal the gradient of the batch's mean
        loss. On out-of-memory the *same batch* runs again with smaller settings.
        Under torchrun ``xb`` is this rank's shard (maybe empty): the ranks agree on
        OOMs, then sum their weighted gradients (see `snugfit.distributed`).
        """
        n = len(xb)
        start_mbs = self._micro(n)
        while True:
            snapshot = StepSnapshot(self.model, self.device) if self.oom_recovery else None
            message = None
            try:
                total = torch.zeros((), device=xb.device)
                mbs = max(self._micro(n), 1)
                # DDP: no gradient sync in backward (see `snugfit.distributed`)
                with getattr(self.net, "no_sync", contextlib.nullcontext)():
                    for x, y in zip(xb.split(mbs), yb.split(mbs), strict=True) if n else ():
                        with self.autocast():
                            self.loss_mb = self.loss_func(self.net(x), y)
                        self._event("after_loss")
                        loss = self.loss_mb * (len(x) / n)
                        (self.scaler.scale(loss) if self.scaler else loss).backward()
                        total += self.loss_mb.detach().float() * len(x)
            except Exception as e:
                if snapshot is None or not is_oom(e):
                    raise
                message = first_line(e)
            if self.distributed:  # every rank, every step: did any rank run out of memory?
                failed, n_all, stops = distributed.agree(
                    message is not None, n, self._interrupt.requested
                )
                self._stop_agreed = stops > 0  # Ctrl-C on any rank: all stop after this step
                if not failed:
                    break
            elif message is None:
                break
            # Out of the except block, the traceback no longer pins the failed
            # step's tensors: drop our own references too, then free and retry.
            x = y = loss = total = self.loss_mb = None
            recover_from_oom(self, snapshot, start_mbs, message)
        if self.distributed:  # the gradient of the global batch's mean loss, on every rank
            params = [p for p in self.net.parameters() if p.requires_grad]
            total = distributed.reduce_gradients(params, n / n_all, total)
            n = n_all
        self.batch_n = n
        self._event("before_step")
        self._optimizer_step()
        self._event("after_step")
        return total / n

    def _optimizer_step(self) -> None:
        if self.scaler is None:
            decoupled_weight_decay(self.opt)
            self.opt.step()
        else:
            # fp16: gradients are unscaled first; a step whose gradients hold
            # inf/NaN is skipped by the scaler (which lowers its scale), and so
            # is its weight decay.
            self.scaler.unscale_(self.opt)
            if grads_finite(self.opt):
                decoupled_weight_decay(self.opt)
            self.scaler.step(self.opt)
            self.scaler.update()
        self.opt.zero_grad(set_to_none=True)  # frees gradient memory until next backward

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            return x  # precomputed features: no image layout
        return x.contiguous(memory_format=self.memory_format)

    def autocast(self):
        """The mixed-precision context of forward passes (a no-op in fp32)."""
        return autocast(self.precision, self.device)

    # -- evaluation and prediction (see `snugfit.inference`) ------------------
    def get_preds(self, dl=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw outputs and targets over a loader (the validation set by default)."""
        return inference.get_preds(self, dl)

    def _eval_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs (float32) without a graph, in chunks of ``eval_bs``; halved on OOM."""
        return inference.eval_forward(self, x)

    def _validate(self, dl) -> tuple[float, dict[str, float]]:
        return inference.evaluate(self, dl)

    def validate(self) -> dict[str, float]:
        """Validation loss and metrics of the current weights."""
        loss, metrics = self._validate(self.dls.valid)
        return {"valid_loss": loss, **metrics}

    def predict(self, image) -> tuple[str | list[str], torch.Tensor]:
        """Classify one image (a path or a PIL image): ``(label, probabilities)``.

        Multi-label: ``(labels, probabilities)``, the labels being the classes whose
        probability is above ``threshold``, in vocabulary order (possibly none).
        """
        labels, probs = self.predict_many([image])
        return labels[0], probs[0]

    def predict_many(self, images: Sequence) -> tuple[list, torch.Tensor]:
        """`predict` for several images: a label (or list of labels) per image, and
        the ``(N, C)`` probabilities."""
        return inference.predict_many(self, images)

    def activation(self, outputs: torch.Tensor) -> torch.Tensor:
        """Probabilities from model outputs: softmax, or sigmoid for multi-label models."""
        return inference.activation(outputs, self.multi_label)

    def tta(self, n: int = 4, dl=None, beta: float | None = 0.25, seed: int = 0):
        """Test-time augmentation (fastai's): ``(probs, targets)`` of ``dl`` (the
        validation set), ``(1 - beta) *`` the mean over ``n`` augmented passes ``+ beta *``
        the plain predictions; ``beta=None``: the augmented mean only (see `snugfit.tta`)."""
        return tta.tta(self, n=n, dl=dl, beta=beta, seed=seed)

    # -- saving ---------------------------------------------------------------
    def save_checkpoint(self, path) -> Path:
        """Training state (weights, optimizer, GradScaler, memory settings, freeze
        state) in one safetensors file, written atomically."""
        return checkpoint.save_checkpoint(self, path)

    def load_checkpoint(self, path) -> dict:
        return checkpoint.load_checkpoint(self, path)

    def save(self, path) -> Path:
        """Write ``path/model.safetensors`` and ``path/snugfit.json``: no pickle."""
        if not distributed.is_main():
            return Path(path)  # rank 0 writes for all
        return export.save_learner(self, path)


def load_learner(path, device: str | torch.device | None = None) -> Learner:
    """Rebuild a Learner for prediction from a folder written by `Learner.save`."""
    return export.load_learner(path, device)


def vision_learner(
    dls,
    arch: str | nn.Module,
    pretrained: bool = True,
    weights=None,
    metrics: Sequence | None = None,
    head_init: str = "auto",
    **kwargs,
) -> Learner:
    """A Learner for transfer learning from a timm architecture.

    The classifier is replaced for ``dls``'s classes, the data is normalised with
    the model's own pretrained mean/std, and the body is frozen when the model
    starts from pretrained weights (``fine_tune`` unfreezes it).

    Args:
        dls: the `ImageDataLoaders`.
        arch: a timm model name (e.g. "tf_efficientnet_lite0") or an ``nn.Module``.
        pretrained: start from pretrained weights (timm's hub unless ``weights``).
        weights: a local weights file (timm state dict in safetensors or .pth, or
            an efficientnet-pytorch state dict, converted by tensor order).
        metrics: metric callables or names; None: "error_rate", or "accuracy_multi"
            and "f1_samples" for multi-label data.
        head_init: "auto" starts the new head from the pretrained ImageNet
            classifier's rows when every class is an ImageNet class (e.g. ants,
            bees); "random" always starts from a fresh head. Multi-label data
            always gets a fresh head: ImageNet's rows are logits of a softmax over
            1000 classes, not of independent sigmoids.
        **kwargs: passed to `Learner` (loss_func, opt, wd, cbs, micro_bs, ...).
    """
    multi = bool(getattr(dls, "multi_label", False))
    if metrics is None:
        metrics = MULTI_LABEL_DEFAULTS if multi else ("error_rate",)
    vocab = None if multi else dls.vocab
    model = models.create_model(
        arch, dls.c, pretrained=pretrained, weights=weights, vocab=vocab, head_init=head_init
    )
    cfg = models.model_config(model)
    dls.mean, dls.std, dls.crop_pct = tuple(cfg["mean"]), tuple(cfg["std"]), cfg["crop_pct"]
    name = arch if isinstance(arch, str) else None
    learn = Learner(dls, model, metrics=metrics, arch=name, **kwargs)
    if pretrained or weights is not None:
        learn.freeze()
    return learn
