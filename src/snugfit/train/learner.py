"""The Learner: a model, its data, an optimizer over layer groups, and the fit loop.

The unit of work is one *optimizer step over one batch*. A batch may be split
into micro-batches whose losses are weighted by their share of the batch, so
the accumulated gradient equals the full-batch gradient; the memory planner
chooses the micro-batch size. The whole loop is `Learner._fit` and `train_step`,
in this file; the training calls that drive it (``fit_one_cycle``, ``fine_tune``,
``auto_fit``, ``lr_find``...) are in `snugfit.train.fitting`.

The Learner owns its state and hands its helpers what they need: the memory
settings change only through `Learner.set_memory`; the plan is the `Planner`'s
(`snugfit.train.planning`); fit numbering and resuming are the `RecipeProgress`'s
(`snugfit.train.resume`); the non-finite guard gets the model and each step's
loss (`snugfit.train.nonfinite`); OOM recovery's pieces take settings and return
settings (`snugfit.memory.oom`). Evaluation and prediction are `snugfit.infer`'s,
checkpoint and model files `snugfit.saving`'s.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Callable, Sequence

import torch
from rich.console import Console
from torch import nn

from snugfit import distributed, models
from snugfit.callbacks import Callback, ProgressCallback, Recorder
from snugfit.callbacks.auto_precision import AutoPrecision
from snugfit.errors import NonFiniteLoss, SnugfitError, check_optional_count, first_line
from snugfit.events import EventLog
from snugfit.memory.oom import StepSnapshot, is_oom
from snugfit.memory.precision import autocast as autocast_for
from snugfit.memory.precision import (
    check_precision,
    cpu_has_native_bf16,
    make_scaler,
    resolve_precision,
)
from snugfit.memory.settings import MemorySettings
from snugfit.tasks import LabelSmoothingCrossEntropy, metric_name
from snugfit.train.checkpoints import CheckpointIO
from snugfit.train.fitting import Fitting
from snugfit.train.interrupt import DeferredInterrupt
from snugfit.train.memory_control import MemoryControl
from snugfit.train.nonfinite import NonFiniteGuard, StepInfo
from snugfit.train.optim import (
    decoupled_weight_decay,
    grads_finite,
    make_optimizer,
    param_groups,
    set_hypers,
)
from snugfit.train.planning import Planner
from snugfit.train.precompute import feature_loaders
from snugfit.train.predicting import Predicting, task_of
from snugfit.train.resume import RecipeProgress, position

log = logging.getLogger("snugfit")


class Learner(Fitting, MemoryControl, Predicting, CheckpointIO):
    """Train ``model`` on ``dls``.

    Args:
        dls: an `ImageDataLoaders` (or None for a learner that only predicts).
        model: the network; it is moved to ``dls.device``.
        loss_func: defaults to cross-entropy; for multi-label data (``dls.multi_label``)
            to ``BCEWithLogitsLoss`` (sigmoid outputs, the mean over samples and classes,
            as fastai's ``BCEWithLogitsLossFlat``). Single-label data may use
            `snugfit.tasks.LabelSmoothingCrossEntropy` (refused for other tasks).
        opt: "adamw" (default), "sgd" or "rmsprop".
        wd: decoupled weight decay (none on norm layers and biases).
        metrics: callables ``(preds, targs) -> 0-d tensor`` or names ("accuracy";
            multi-label: "accuracy_multi", "f1_samples").
        cbs: extra callbacks.
        precision: "auto" (default), "fp32", "bf16" or "fp16" (see `snugfit.memory.precision`).
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
            `snugfit.train.nonfinite`). None: no checks.
        channels_last: NHWC memory format for model and inputs; None picks it for
            CNNs (measured: 1.6x faster training steps for EfficientNet-Lite0 on CPU).
        precompute: while only the head trains, run the frozen body once over the
            (un-augmented) images and train the head on the stored features
            (see `snugfit.train.precompute`). Set ``learn.precompute = False`` to train
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
        task: what the model predicts (`snugfit.tasks`): ``dls.task`` (or from ``infer``).
        memory: the `MemorySettings` (micro-batch, accumulation, checkpointing,
            precision, evaluation chunks); changed only by `set_memory`.
        planner: the memory budget and the last plan (`snugfit.train.planning`).
        events: the event log (`snugfit.events`).
        progress: the outermost training call's fits and resume point.
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
        self.dls, self._infer, self.arch = dls, infer, arch
        self.device = dls.device if dls is not None else torch.device("cpu")
        # Under torchrun: join the job; the loop then syncs, shards and reduces.
        self.distributed = dls is not None and distributed.setup(self.device)
        self.sync_bn = sync_bn and self.distributed
        self.model = self._placed(model, channels_last, compile)
        self.net = self.model  # what the loop calls: the model, or only its head
        self.task = task_of(dls, infer)
        if isinstance(loss_func, LabelSmoothingCrossEntropy) and self.task.name != "single_label":
            raise SnugfitError(
                "loss_func: LabelSmoothingCrossEntropy is for single-label classification "
                f"(a softmax over the classes), not {self.task.name} data"
            )
        self.loss_func = loss_func or self.task.loss()
        self.metrics = [self.task.metric(m) for m in metrics]
        self.groups, self.group_names = models.layer_groups(model), models.group_names(model)
        self.wd, self.opt_name = wd, opt
        no_decay = models.norm_and_bias_param_names(model)
        self.opt = make_optimizer(opt, param_groups(self.groups, no_decay, wd))
        self.precision_request = check_precision(precision)
        self.memory = MemorySettings(
            micro_bs=check_optional_count("micro_bs", micro_bs),
            accumulate=check_optional_count("accumulate", accumulate),
            precision=resolve_precision(precision, self.device),
        )
        self.scaler = make_scaler(self.memory.precision, self.device)
        self.events = EventLog()  # phases, plans, OOMs, stops (see `snugfit.events`)
        if checkpointing:
            self.set_memory("asked for", checkpointing=True)
        self.bn_freeze_below, self._bn_note = bn_freeze_below, None
        self.oom_recovery = oom_recovery and not self.sync_bn
        self.nonfinite = NonFiniteGuard(check_optional_count("max_nonfinite", max_nonfinite))
        self.planner = Planner(memory_budget, self.device)
        self.precompute, self._features = precompute, {}
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
        self.progress = RecipeProgress()
        self.recipe_state: dict = {}  # decisions a recipe made (LRs), kept in checkpoints
        self.recipe_tensors: dict[str, torch.Tensor] = {}  # weights it keeps, likewise
        self.ctrl_c = DeferredInterrupt()
        self._stop_agreed = False  # under torchrun: some rank was asked to stop (Ctrl-C)
        self.interrupted = False  # Ctrl-C was pressed: training stops after this event

    def _placed(self, model: nn.Module, channels_last: bool | None, compile: bool) -> nn.Module:
        """The model on the device, in its memory format (SyncBatchNorm, compiled)."""
        if self.sync_bn:
            if self.device.type != "cuda":
                raise SnugfitError("sync_bn: SyncBatchNorm needs CUDA devices")
            model = distributed.convert_sync_bn(model)
        self.channels_last = models.is_cnn(model) if channels_last is None else channels_last
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        model = model.to(self.device, memory_format=self.memory_format)
        if compile:
            model.compile()  # nn.Module.compile: in place, keys unchanged
        return model

    # -- what the learner predicts ------------------------------------------------
    @property
    def metric_names(self) -> list[str]:
        return [metric_name(m) for m in self.metrics]

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

    @property
    def body_frozen(self) -> bool:
        """Whether only the head (the last layer group) trains."""
        return self.frozen_to == len(self.groups) - 1

    # -- the loop -------------------------------------------------------------
    def position(self, after_batch: bool) -> dict:
        """Where training stands: the next (fit, epoch, batch) to run."""
        return position(self.fit_index, self.epoch, self.iter, self.n_epoch, after_batch)

    def _event(self, name: str) -> None:
        for cb in self.cbs:
            getattr(cb, name)(self)

    def _fit(self, n_epoch: int, scheduler: Callback, cbs: Sequence[Callback] = ()) -> None:
        """The training loop; the event order is documented in `snugfit.callbacks`."""
        start = self._begin_fit(n_epoch, added := [scheduler, *cbs])
        if start is None:
            return  # done before the checkpoint we resume from
        start_epoch, start_iter = start
        try:
            self.nonfinite.start(self.model, self.opt, self.device)  # weights to fall back to
            self._event("before_fit")
            for self.epoch in range(start_epoch, n_epoch):
                self._event("before_epoch")
                self.train_mode()
                self._event("before_train")
                skip, start_iter = start_iter, 0
                for i, (xb, yb) in enumerate(self._train_batches(skip), start=skip):
                    self.iter, self.xb, self.yb = i, self.prepare_input(xb), yb
                    self.pct_train = self.train_iter / self.total_iters
                    self._event("before_batch")
                    self.loss = self.train_step(self.xb, self.yb)
                    # NaN/inf: the last good weights come back and NonFiniteLoss stops the fit
                    self.nonfinite.check(self.loss, self._step_info())
                    # callbacks may save on it; under torchrun every rank stops at the same step
                    self.interrupted = self.stop_requested()
                    self._event("after_batch")
                    self.train_iter += 1
                    if self.interrupted:
                        raise KeyboardInterrupt  # Ctrl-C, acted on after a whole step
                self.nonfinite.end_epoch(self.epoch, more=self.epoch + 1 < n_epoch)
                self._event("after_train")
                self._event("before_validate")
                self.valid_loss, self.metric_values = self.evaluate_valid(self.valid_dl)
                self._event("after_validate")
                self.interrupted = self.ctrl_c.requested
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
            self._end_fit(added)

    def stop_requested(self) -> bool:
        """Whether Ctrl-C asked training to stop, to be acted on after the step just
        taken (under torchrun: on any rank, as the ranks agreed in that step)."""
        return self._stop_agreed if self.distributed else self.ctrl_c.requested

    def _begin_fit(self, n_epoch: int, added: list) -> tuple[int, int] | None:
        """Number the fit, add its callbacks, set up its data: the (epoch, batch) to
        start from, or None when a resumed recipe already did this fit."""
        if self.dls is None:
            raise SnugfitError("this learner has no data: it was loaded for prediction only")
        if not isinstance(n_epoch, int) or n_epoch < 1:
            raise SnugfitError(f"n_epoch: expected a positive integer, got {n_epoch!r}")
        self.fit_index = self.progress.next_fit()
        start_epoch, start_iter = self.progress.start_point(self.fit_index)
        if start_epoch is None:
            return None
        self.cbs.extend(added)
        self.cbs.sort(key=lambda c: c.order)  # stable: equal orders keep insertion order
        self.train_dl, self.valid_dl, self.net = self.loaders()
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
        self.replan_if_needed()  # unfreezing or a new size moves memory: plan again
        self.progress.rewind_rng(self.fit_index)  # in the fit resumed from: as at the checkpoint
        return start_epoch, start_iter

    def _end_fit(self, added: list) -> None:
        self._event("after_fit")
        self.events.emit("fit_end", fit=self.fit_index, early_stop=self.stop_training)
        self.net = self.model
        for cb in added:
            self.cbs.remove(cb)

    def _step_info(self) -> StepInfo:
        lr = max(g["lr"] for g in self.opt.param_groups)
        return StepInfo(self.fit_index, self.epoch, self.iter, self.train_iter, self.precision, lr)

    def loaders(self):
        """Training and validation batches, and the module they go through: the
        images and the whole model, or precomputed features and only the head."""
        if self.distributed:
            # Every rank trains on its shard of each batch (precomputed features are
            # not sharded: the head trains on images), through DDP.
            return self.dls.train, self.dls.valid, distributed.wrap(self.model, self.device)
        if self.precompute and self.can_precompute and self.body_frozen:
            train, valid = feature_loaders(self, self._features)
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

    def train_step(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """One optimizer step over one batch; returns the batch's mean loss (on device).

        The batch is split into micro-batches; each loss is weighted by its share of
        the samples, so the summed gradients equal the gradient of the batch's mean
        loss. On out-of-memory the *same batch* runs again with smaller settings.
        Under torchrun ``xb`` is this rank's shard (maybe empty): the ranks agree on
        OOMs, then sum their weighted gradients (see `snugfit.distributed`).
        """
        n = len(xb)
        start_mbs = self.memory.micro(n)
        while True:
            snapshot = StepSnapshot(self.model, self.device) if self.oom_recovery else None
            message = None
            try:
                total = self._backward(xb, yb)
            except Exception as e:
                if snapshot is None or not is_oom(e):
                    raise
                message = first_line(e)
            if self.distributed:  # every rank, every step: did any rank run out of memory?
                failed, n_all, stops = distributed.agree(
                    message is not None, n, self.ctrl_c.requested
                )
                self._stop_agreed = stops > 0  # Ctrl-C on any rank: all stop after this step
                if not failed:
                    break
            elif message is None:
                break
            # Out of the except block, the traceback (and with it the failed forward's
            # frame) no longer pins the step's tensors: drop our own references too.
            total = self.loss_mb = None
            self._fall_back(snapshot, n, start_mbs, message)
        if self.distributed:  # the gradient of the global batch's mean loss, on every rank
            params = [p for p in self.net.parameters() if p.requires_grad]
            total = distributed.reduce_gradients(params, n / n_all, total)
            n = n_all
        self.batch_n = n
        self._event("before_step")
        self._optimizer_step()
        self._event("after_step")
        return total / n

    def _backward(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """Forward and backward of each micro-batch; the batch's summed loss (on device)."""
        n = len(xb)
        total = torch.zeros((), device=xb.device)
        mbs = max(self.memory.micro(n), 1)
        # DDP: no gradient sync in backward (see `snugfit.distributed`)
        with getattr(self.net, "no_sync", contextlib.nullcontext)():
            for x, y in zip(xb.split(mbs), yb.split(mbs), strict=True) if n else ():
                with self.autocast():
                    self.loss_mb = self.loss_func(self.net(x), y)
                self._event("after_loss")
                loss = self.loss_mb * (len(x) / n)
                (self.scaler.scale(loss) if self.scaler else loss).backward()
                total += self.loss_mb.detach().float() * len(x)
        return total

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

    def set_hypers(self, lrs: Sequence[float], mom: float | None) -> None:
        """Each layer group's learning rate, and the momentum (None: unchanged)."""
        set_hypers(self.opt, lrs, mom)

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """A batch in the model's memory format (precomputed features as they are)."""
        if x.ndim != 4:
            return x  # precomputed features: no image layout
        return x.contiguous(memory_format=self.memory_format)

    def autocast(self, precision: str | None = None):
        """The mixed-precision context of forward passes (a no-op in fp32), in the
        learner's precision or ``precision``."""
        return autocast_for(precision or self.precision, self.device)

    @property
    def precision_is_timed(self) -> bool:
        """Whether fp32 and bf16 are timed against each other (``precision="auto"``
        on a CPU with bf16 instructions: `snugfit.callbacks.auto_precision`)."""
        return any(isinstance(cb, AutoPrecision) for cb in self.cbs)
