"""The recipes: fastai's ``learn.fine_tune()``, and the automated checklist
``learn.auto_fit()``, the default of ``snugfit train``.

`fine_tune` trains the head, then everything at discriminative rates.

`auto_fit` is the seed recipe for "a world-class image classifier", each step
visible in the output and each one switchable:

0. decide whether the body will train (``unfreeze="auto"``): only when the
   images, at the size the head on a frozen body would see (``head_scale``
   times the data's), look unlike the pretraining data to its BatchNorm
   statistics (`Learner.pretraining_shift` above ``max_shift``). Measured
   (README, "The automated checklist"): hymenoptera photos read 0.10-0.20 at
   96-336 px and the frozen body won at 64, 128 and 224 px (at 224 training the
   body took 70% of the time and was never kept); digit scans read 0.48 and
   training the body halved the error; texture patches 0.27, where both did alike;
1. precompute the frozen body's features (``precompute``); when the body stays
   frozen, at ``head_scale`` times the data's size (FixRes: ImageNet models,
   trained on random crops that enlarge objects, see best above their training
   size; hymenoptera, head solved: 3.3% error at 1.3x, 2.0% at 1.5x), and
   the model kept keeps that size; a head that the body's training will start
   from is fitted at the data's own size (at 1.3x, digits lost 2 points);
2. when the body stays frozen, solve the head on the features (``solve_head``:
   L2-regularised logistic regression by L-BFGS, `snugfit.train.head_solve`;
   hymenoptera with neutral names: 2.0% error in 0.1 s, against 3.3% after
   epochs of Adam and one of augmentation); otherwise find its learning rate
   (``lr_find``, on the features: instant) and
3. train the head on the features (``head_epochs``);
4. train the head with data augmentation (``head_aug_epochs``; by default one
   epoch after step 3, none after a solve, where it was never kept);
5. unfreeze (when step 0 said so), with discriminative learning rates (each
   layer group a fixed factor below the next, spanning ``lr_mult`` in all) --
   unless no phase so far improved on the starting point (``stop_if_no_gain``:
   a head that starts from ImageNet's own rows for these classes and cannot be
   improved on this data; measured on hymenoptera, unfreezing then only lost
   accuracy);
6. find the learning rate again (``lr_find_unfrozen``: on a CPU a sweep costs
   about as much as training, so "auto" runs it only when it is cheap compared
   with the epochs it tunes, and otherwise uses the head's rate times
   ``unfrozen_lr_ratio``, at most ``max_unfrozen_lr``);
7. train the whole network with one-cycle or SGDR (``schedule``), early
   stopping and, optionally, progressive resizing (``sizes``).

After every epoch the validation loss is compared with the best so far; the
weights of the best epoch (of any phase) are restored at the end (a phase that
did not help, such as unfreezing on a tiny data set, costs time but not
accuracy; a phase whose last epoch overfits keeps its best epoch). When no epoch
improved on the start, the run says so: the model kept is the pretrained one
with its starting head.

A segmentation model's head is a decoder built from scratch, which reads every
level of the encoder: its defaults (`snugfit.train.recipe_defaults`) skip steps 1-4 (the decoder
trains with the encoder from the first step) and train everything for 8 epochs
at one learning rate (``lr_mult=1``; step 6's rule, as no head rate was found)
without early stopping, the best epoch kept.

Decisions (whether to unfreeze, learning rates) are kept in ``learn.recipe_state``,
which checkpoints carry, so a resumed run takes the same ones instead of measuring
or sweeping again.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import astuple

from snugfit.callbacks import Callback
from snugfit.callbacks.early_stopping import EarlyStopping
from snugfit.callbacks.progressive import ProgressiveResize
from snugfit.errors import SnugfitError, check_count, check_positive
from snugfit.models import fixed_input_size, has_classifier, imagenet_rows
from snugfit.sizes import Size, format_size, scale_size
from snugfit.train.recipe_defaults import defaults_for


def _log(learn, text: str) -> None:
    learn.console.print(text, highlight=False)


def _phase(learn, name: str) -> None:
    """Print a phase's start and put it in the event log (``learn.events``)."""
    _log(learn, f"phase: {name}")
    learn.events.emit("phase", name=name)


def _decide_lr(learn, key: str, phase: str, default: float, run_sweep: bool) -> float:
    """An LR from lr_find's valley (or ``default``), remembered for resuming."""
    state = learn.recipe_state
    if key in state:
        _log(learn, f"  {phase}: learning rate {state[key]:.2e} (from the checkpoint)")
        return state[key]
    if run_sweep:
        result = learn.lr_find()
        lr = result.suggested
        why = f"lr_find valley (minimum/10 {result.suggestions['minimum']:.1e})"
    else:
        lr, why = default, "rule"
    state[key] = lr
    _log(learn, f"  {phase}: learning rate {lr:.2e} ({why})")
    learn.events.emit("lr", phase=phase, lr=lr, why=why)
    return lr


class _Best:
    """The weights of the epoch with the lowest validation loss so far (any phase).

    Kept in ``learn.recipe_state`` and ``learn.recipe_tensors``, which checkpoints
    carry: a resumed run compares with the same best, not with the weights it
    resumed from. (Updates for the phases a resumed run skips change nothing:
    they were made before its checkpoint.)
    """

    def __init__(self, learn):
        self.learn = learn
        saved = learn.recipe_state
        if "best_loss" in saved:  # resumed
            self.loss, self.phase = saved["best_loss"], saved["best_phase"]
            self.epoch, self.size = saved.get("best_epoch"), saved.get("best_size")
            self.state = {k[5:]: v for k, v in learn.recipe_tensors.items() if k[:5] == "best."}
        else:
            self._keep(learn.validate()["valid_loss"], "start", None)

    def _keep(self, loss: float, phase: str, epoch: int | None) -> None:
        self.loss, self.phase, self.epoch = loss, phase, epoch
        self.size = self.learn.dls.size  # the size these weights were validated at
        self.state = _host_copy(self.learn.model)
        self.learn.recipe_state.update(
            best_loss=loss, best_phase=phase, best_epoch=epoch, best_size=self.size
        )
        self.learn.recipe_tensors.update({f"best.{k}": v for k, v in self.state.items()})

    def update(self, learn, phase: str) -> None:
        """Keep the current weights if the epoch just validated beat the best."""
        loss = learn.recorder.rows[-1]["valid_loss"] if learn.recorder.rows else float("inf")
        self.offer(loss, phase, learn.epoch)

    def offer(self, loss: float, phase: str, epoch: int | None) -> None:
        """Keep the current weights, validated at ``loss``, if they beat the best."""
        if loss < self.loss:
            self._keep(loss, phase, epoch)

    def tracking(self, phase: str) -> Callback:
        """A callback that offers every epoch of a fit of ``phase`` to `update`."""
        return _EpochBest(self, phase)

    def restore(self, learn) -> str:
        learn.model.load_state_dict(self.state)
        if self.size is not None:  # the model is saved with the size it was best at
            _use_size(learn, self.size)
        # done: a later auto_fit starts afresh
        del learn.recipe_state["best_loss"]
        learn.recipe_tensors = {k: v for k, v in learn.recipe_tensors.items() if k[:5] != "best."}
        return self.phase


class _EpochBest(Callback):
    """Offers each validated epoch to `_Best` (after the Recorder's row; before EMA
    puts the raw weights back, so the weights kept are the ones validated)."""

    order = 72

    def __init__(self, best: _Best, phase: str):
        self.best, self.phase = best, phase

    def after_epoch(self, learn) -> None:
        self.best.update(learn, self.phase)


def _host_copy(model) -> dict:
    # In host memory: a second copy of the weights on the device would take
    # memory the plan gave to training.
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def fine_tune(learn, epochs, base_lr, freeze_epochs, lr_mult, pct_start, div, cbs) -> None:
    """`Learner.fine_tune` (its defaults): the head for ``freeze_epochs``, then all."""
    check_count("epochs", epochs)
    check_count("freeze_epochs", freeze_epochs)
    check_positive("base_lr", base_lr)  # fails before any training
    if freeze_epochs:
        learn.events.emit("phase", name="head (frozen body)")
        learn.freeze()
        learn.fit_one_cycle(freeze_epochs, slice(base_lr), pct_start=0.99, cbs=cbs)
    base_lr /= 2
    learn.unfreeze()
    if epochs:
        learn.events.emit("phase", name="unfrozen")
        learn.fit_one_cycle(
            epochs, slice(base_lr / lr_mult, base_lr), pct_start=pct_start, div=div, cbs=cbs
        )


def auto_fit(
    learn,
    epochs: int | None = None,
    head_epochs: int | None = None,
    head_aug_epochs: int | None = None,
    precompute: bool = True,
    lr_find: bool = True,
    lr_find_unfrozen: str | bool = "auto",
    lr_mult: float | None = None,
    unfrozen_lr_ratio: float = 1.0,
    max_unfrozen_lr: float = 2e-3,
    stop_if_no_gain: bool = True,
    unfreeze: bool | str = "auto",
    max_shift: float = 0.35,
    schedule: str = "one_cycle",
    patience: int | None = None,
    sizes: Sequence[int] | None = None,
    head_scale: float = 1.5,
    solve_head: bool = True,
    cbs=(),
) -> None:
    """Run the checklist (module docstring); print each phase and the LR it chose.
    Arguments left None take the model's defaults (`recipe_defaults.DEFAULTS`);
    ``patience=0`` trains every unfrozen epoch (no early stopping)."""
    epochs, head_epochs, head_aug_epochs, lr_mult, patience = _with_defaults(
        learn, epochs, head_epochs, head_aug_epochs, lr_mult, patience
    )
    _check_auto_fit(
        schedule, sizes, epochs=epochs, head_epochs=head_epochs,
        head_aug_epochs=head_aug_epochs, patience=patience, lr_mult=lr_mult,
        unfrozen_lr_ratio=unfrozen_lr_ratio, max_unfrozen_lr=max_unfrozen_lr,
        head_scale=head_scale, max_shift=max_shift, unfreeze=unfreeze,
    )  # fmt: skip
    start = time.perf_counter()
    learn.freeze()
    base_size = learn.dls.size
    head_size = _head_size(learn, head_scale)
    unfreeze = bool(epochs) and _decide_unfreeze(learn, unfreeze, max_shift, head_size)
    if unfreeze:
        # FixRes pays where the head on frozen features is the model; a body that
        # trains next would start from a head fitted to other features (measured
        # on digits: 5.6/5.8/3.3% error -> 7.8/8.4/5.3% with the head at 1.3x)
        head_size = base_size
    _use_size(learn, head_size)
    if head_size != base_size:
        _log(learn, f"auto_fit: the head phases see {format_size(head_size)} px images "
                    f"({head_scale:g}x the size: frozen ImageNet features are sharper there)")  # fmt: skip
    if precompute and head_epochs and learn.can_precompute:
        learn.precompute_features()  # validating a frozen body then reads them too
    best = _Best(learn)
    _log(learn, f"auto_fit: starting validation loss {best.loss:.4f}")
    learn.events.emit("recipe_start", recipe="auto_fit", valid_loss=best.loss)
    # 1-4: the head, on precomputed features, then with augmentation
    # a solved head is a bad start for training the body (see `_solve_head`)
    lr_head = _head_phases(learn, best, head_epochs, head_aug_epochs, precompute, lr_find,
                           solve_head and not unfreeze, cbs)  # fmt: skip
    head_trained = bool(head_epochs) or head_aug_epochs != 0  # None: an epoch or a solve
    # 5-7: everything, with discriminative learning rates
    if unfreeze and stop_if_no_gain and head_trained and best.phase == "start":
        _log(
            learn,
            "phase: unfrozen skipped: training the head did not improve on the pretrained "
            "start (stop_if_no_gain=False runs it anyway)",
        )
        learn.events.emit("phase", name="unfrozen", skipped="no gain from training the head")
        unfreeze = False
    if unfreeze:
        # A high head LR (a random head on easy features) would wreck a pretrained
        # body: measured on hymenoptera, 9e-3 fell to 85% where 1e-3 kept 96%.
        default = min(lr_head * unfrozen_lr_ratio, max_unfrozen_lr) if lr_head else max_unfrozen_lr
        extra = [EarlyStopping("valid_loss", patience=patience)] if patience else []
        if sizes:
            extra.append(ProgressiveResize(sizes))
        extra.append(best.tracking("unfrozen"))
        _use_size(learn, base_size)
        _unfrozen_phase(learn, epochs, default, lr_find_unfrozen, lr_mult, schedule,
                        [*extra, *cbs])  # fmt: skip
    _keep_best(learn, best, time.perf_counter() - start)


def _with_defaults(learn, *given) -> tuple:
    """``(epochs, head_epochs, head_aug_epochs, lr_mult, patience)``: those given,
    the others (None) the model's defaults (`defaults_for`), said when a decoder's."""
    defaults = astuple(defaults_for(learn.model))
    values = tuple(d if v is None else v for v, d in zip(given, defaults, strict=True))
    if not has_classifier(learn.model):
        epochs, head_epochs, head_aug_epochs, lr_mult, patience = values
        head = head_epochs + head_aug_epochs  # a decoder's are never None
        how = (f"alone on the frozen encoder for {head} epoch{'s' * (head > 1)}, then with "
               f"it for {epochs}" if head else f"with the encoder from the first step: "
               f"{epochs} epoch{'s' * (epochs != 1)}")  # fmt: skip
        stop = f"early stopping after {patience}" if patience else "no early stopping"
        _log(learn, f"auto_fit: the decoder is new and reads every level of the encoder; it "
                    f"trains {how} (lr_mult {lr_mult:g}, {stop})")  # fmt: skip
    return values


def _decide_unfreeze(learn, unfreeze: bool | str, max_shift: float, head_size: Size) -> bool:
    """Whether to train the body: ``unfreeze`` if True or False; "auto": when the
    images, at ``head_size`` (what a frozen body's head would see), are unlike the
    pretraining data to its BatchNorm statistics (`Learner.pretraining_shift`
    above ``max_shift``), or cannot be compared, or the model is not a classifier
    (a segmentation decoder reads every level of the body, not only the deep
    features measured). Remembered for resuming."""
    if unfreeze != "auto":
        return bool(unfreeze)
    state = learn.recipe_state
    if "unfreeze" in state:
        return state["unfreeze"]
    shift = None
    if not has_classifier(learn.model):
        decide, why = True, "a decoder reads every level of the body, not only the deepest"
    elif (shift := _shift_at(learn, head_size)) is None:
        decide, why = True, "no BatchNorm statistics of the pretraining data to compare with"
    elif shift > max_shift:
        decide, why = True, "the images are unlike the pretraining data to the body"
    else:
        decide, why = False, ("the images look like the pretraining data to the body: its "
                              "frozen features fit them, and the head trained on them is "
                              "the model (unfreeze=True, --unfreeze yes, trains it anyway)")  # fmt: skip
    size = format_size(learn.dls.size)
    figure = (
        "" if shift is None else f" (BatchNorm shift {shift:.2f} at {size} px, limit {max_shift:g})"
    )
    _log(learn, f"auto_fit: the body {'will train' if decide else 'stays frozen'}{figure}: {why}")
    learn.events.emit("unfreeze", decision=decide, shift=shift, max_shift=max_shift, size=size)
    state["unfreeze"] = decide
    return decide


def _shift_at(learn, size: Size) -> float | None:
    """`Learner.pretraining_shift` of the images at ``size`` (kept from now on)."""
    _use_size(learn, size)
    return learn.pretraining_shift()


def _head_size(learn, scale: float) -> Size:
    """The head phases' image size: the data's times ``scale`` (on a multiple of 8),
    or the data's own for a segmentation model (its decoder trains too) or a model
    that takes one input size only."""
    size = learn.dls.size
    if scale == 1 or learn.task.name == "segmentation" or fixed_input_size(learn.model):
        return size
    return scale_size(size, scale, 8)


def _use_size(learn, size: Size) -> None:
    """Train and validate at ``size`` from now on (the next fit plans memory again)."""
    if size != learn.dls.size:
        learn.dls.set_size(size)


def _keep_best(learn, best: _Best, seconds: float) -> None:
    """Load the best epoch's weights and say which they are (plainly when no training
    improved on the pretrained start)."""
    epoch = best.epoch
    kept = best.restore(learn)
    learn.recipe_state.pop("head_solved", None)  # a later auto_fit solves afresh
    learn.recipe_state["best_phase"] = kept
    learn.events.emit("kept", phase=kept, epoch=epoch, valid_loss=best.loss)
    if kept == "start":
        what = "no training phase improved on the start: the model kept is "
        if learn.dls.task.imagenet_head and imagenet_rows(learn.dls.vocab):
            what += "the pretrained ImageNet classifier for your classes"
        else:
            what += "the pretrained model with the head it started from"
    else:
        what = f"kept the weights after phase '{kept}'"
        if epoch is not None:
            what += f", epoch {epoch}"
    _log(learn, f"auto_fit: {what} (validation loss {best.loss:.4f}); {seconds:.0f} s")


def _check_auto_fit(schedule: str, sizes, **values) -> None:
    """Bad arguments fail now, not after minutes of the phases before them."""
    if values["unfreeze"] not in (True, False, "auto"):
        raise SnugfitError(f"unfreeze: expected True, False or 'auto', got {values['unfreeze']!r}")
    if schedule not in ("one_cycle", "sgdr"):
        raise SnugfitError(f"schedule: expected 'one_cycle' or 'sgdr', got {schedule!r}")
    for name in ("epochs", "head_epochs", "patience"):
        check_count(name, values[name])
    if values["head_aug_epochs"] is not None:  # None: by whether the head is solved
        check_count("head_aug_epochs", values["head_aug_epochs"])
    for name in ("lr_mult", "unfrozen_lr_ratio", "max_unfrozen_lr", "head_scale", "max_shift"):
        check_positive(name, values[name])
    for s in sizes or ():
        check_count("sizes", s, minimum=1)


def _head_phases(learn, best, head_epochs, head_aug_epochs, precompute, lr_find, solve,
                 cbs) -> float | None:  # fmt: skip
    """Steps 1-4: the head solved on precomputed features, or trained on them (or on
    images), then with augmentation; returns the head's learning rate (None when
    no epoch of the head ran)."""
    if precompute and head_epochs and not learn.can_precompute:
        _log(learn, "  precomputed features do not apply to this model (its decoder needs the "
                    "encoder's skip features, or torchrun shards the images): the head trains "
                    "on images")  # fmt: skip
        precompute = False
    solve = solve and bool(head_epochs) and precompute and learn.can_solve_head
    if solve and not learn.features_in_memory():
        _log(learn, "  the stored features are too large for memory (memory-mapped from "
                    "disk): the head trains by epochs instead of being solved")  # fmt: skip
        solve = False
    if head_aug_epochs is None:  # an epoch of augmentation was never kept after a solve
        head_aug_epochs = 0 if solve else 1
    learn.precompute = precompute
    lr_head = None
    if solve:
        _phase(learn, "head solved on precomputed features")
        _solve_head(learn, best)
    elif head_epochs:
        _phase(learn, "head on " + ("precomputed features" if precompute else "images"))
        lr_head = _decide_lr(learn, "lr_head", "head", 2e-3, lr_find)
        learn.fit_one_cycle(head_epochs, lr_head, cbs=[*cbs, best.tracking("head")])
    if lr_head is None and head_aug_epochs:  # (none: the unfrozen phase's rule applies)
        lr_head = _decide_lr(learn, "lr_head", "head", 2e-3, lr_find)
    learn.precompute = False
    if head_aug_epochs:
        _phase(learn, "head with data augmentation")
        phase = "head with augmentation"
        learn.fit_one_cycle(head_aug_epochs, lr_head / 2, pct_start=0.3,
                            cbs=[*cbs, best.tracking(phase)])  # fmt: skip
    return lr_head


def _solve_head(learn, best: _Best) -> None:
    """Step 3 when the body stays frozen and the head can be solved: L-BFGS to the
    optimum on the stored features (`Learner.solve_head`), offered to the best like
    an epoch. Skipped when resuming from a checkpoint written after it (the
    checkpoint holds it). Not when the body will train: features that barely vary
    in the frozen body get large weights in the solution, and once the body
    trains their changes swamp the logits (digits: training loss 62 and 87%
    validation error in the first unfrozen epoch)."""
    state = learn.recipe_state
    if state.get("head_solved"):
        _log(learn, "  head: solved before the checkpoint")
        return
    start = time.perf_counter()
    loss = learn.solve_head()
    result = learn.validate()
    state["head_solved"] = True
    best.offer(result["valid_loss"], "head (solved)", None)
    metrics = ", ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in result.items())
    _log(learn, f"  head: logistic regression by L-BFGS on the stored features "
                f"({time.perf_counter() - start:.1f} s): training loss {loss:.4f}, {metrics}")  # fmt: skip
    learn.events.emit("head_validated", **result)


def _unfrozen_phase(learn, epochs, default_lr, lr_find_unfrozen, lr_mult, schedule, cbs) -> None:
    """Steps 5-7: unfreeze, choose the learning rate (a sweep when cheap), train."""
    learn.unfreeze()
    n_steps = epochs * len(learn.dls.train)
    cheap = 0.25 * n_steps >= 100  # a sweep is 100 steps
    sweep = lr_find_unfrozen is True or (lr_find_unfrozen == "auto" and cheap)
    _phase(learn, "unfrozen, " + ("one learning rate" if lr_mult == 1 else
                                  "discriminative learning rates"))  # fmt: skip
    lr = _decide_lr(learn, "lr_unfrozen", "unfrozen (last group)", default_lr, sweep)
    lrs = slice(lr / lr_mult, lr)
    if schedule == "sgdr":
        learn.fit_sgdr(_cycles(epochs), 1, lr_max=lrs, cycle_mult=2, cbs=cbs)
    else:
        learn.fit_one_cycle(epochs, lrs, pct_start=0.3, div=5, cbs=cbs)


def _cycles(epochs: int) -> int:
    """SGDR cycles of 1, 2, 4... epochs that fit in ``epochs`` (at least one)."""
    n, total = 0, 0
    while total + 2**n <= epochs:
        total += 2**n
        n += 1
    return max(n, 1)
