"""A whole training run from a `TrainConfig`: data, model, fine_tune, outputs.

Shared by ``snugfit train`` and ``snugfit demo``. The data are class folders
(`ImageDataLoaders.from_folder`) or, with ``cfg.csv``, a CSV of files and labels
(`ImageDataLoaders.from_csv`; multi-label with ``cfg.label_delim``: BCE loss,
``accuracy_multi`` and ``f1_samples``). ``cfg.label_smoothing``, ``cfg.mixup`` and
``cfg.cutmix`` (0: off) add `LabelSmoothingCrossEntropy`, `MixUp` or `CutMix`
(`regularisation`: classification only, label smoothing single-label only, MixUp
or CutMix, not both). Everything a run produces goes
to ``cfg.out``: the model (safetensors + JSON), ``config.json``, ``check.json``
(`snugfit.data.check`: the data check run first), ``metrics.csv``,
``checkpoint.safetensors`` (resumable with ``--resume``),
``batch.png`` (an augmented batch), ``loss.png``, ``lr.png``, ``events.jsonl`` (the
event log, `snugfit.events`), ``report.html`` (`snugfit.app.report`), ``tensorboard/``
(with ``cfg.tensorboard``) and, when some files could not be read, ``skipped.txt``;
`snugfit.app.run_folder` names them.

When training stops on an error (a non-finite loss, Ctrl-C, an out-of-memory
error nothing fixes), the plots, ``skipped.txt`` and the report are still
written, with what exists: the report then has no confusion matrix or top
losses, which would need a pass over the validation set (not what Ctrl-C asks
for) and describe weights that are not a finished model. A multi-label run's
report has a per-label precision/recall/F1 table instead (confusion matrix and
top losses are for single-label runs).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from rich.console import Console

from snugfit import distributed
from snugfit.app.config import TrainConfig
from snugfit.app.dataset import check_data, loaders
from snugfit.app.report import write_report
from snugfit.app.run_folder import RunFolder
from snugfit.callbacks import EMA, CutMix, MixUp, SaveCheckpoint, TensorBoardCallback
from snugfit.callbacks.ema import check_decay
from snugfit.data.check_report import CheckReport
from snugfit.data.loaders import ImageDataLoaders, resolve_device
from snugfit.errors import NonFiniteLoss, SnugfitError, first_line
from snugfit.events import JsonLinesSink
from snugfit.infer.interpret import interpret as interpret_model
from snugfit.tasks import LabelSmoothingCrossEntropy
from snugfit.train.factory import learner_for
from snugfit.train.learner import Learner

log = logging.getLogger("snugfit")


def train(cfg: TrainConfig, console: Console | None = None) -> Learner:
    console = console or Console()
    if cfg.ema is not None:
        check_decay("ema", cfg.ema)  # before minutes of data checking
    # Under torchrun: join the job first; rank 0 prints and writes the run's files.
    main = not distributed.setup(resolve_device(cfg.device)) or distributed.is_main()
    if not main:
        console = Console(quiet=True)
    folder = RunFolder(Path(cfg.out))
    # Before the data check: a missing tensorboard package fails at once.
    tensorboard = TensorBoardCallback(folder.tensorboard) if cfg.tensorboard and main else None
    check_regularisation(cfg)  # bad values fail before the data check
    torch.manual_seed(cfg.seed)  # the new head's initialisation
    report, dls = _data(cfg, console)
    loss_func, mixing = regularisation(cfg, dls.task)
    learn = _learner(cfg, dls, console, loss_func)
    if main:
        _start_files(folder, cfg, report, learn)
    learn.events.emit("run_start", out=str(folder.root), resume=cfg.resume)
    learn.events.emit(
        "data",
        train=len(dls.train_items),
        valid=len(dls.valid_items),
        classes=dls.c,
        multi_label=dls.multi_label,
        unreadable=len(report.unreadable),
        missing=len(report.missing),
    )
    # One resumable checkpoint, rewritten atomically after every epoch (and every
    # N batches, and on Ctrl-C).
    cbs = [SaveCheckpoint(folder.checkpoint, every_batches=cfg.checkpoint_every), *mixing]
    if tensorboard is not None:
        cbs.append(tensorboard)
    if cfg.ema is not None:  # every fit of the recipe averages its own steps
        cbs.append(EMA(cfg.ema))
    try:
        _fit(learn, cfg, cbs)
        learn.save(folder.model)
    except BaseException as e:
        status = _stopped(e)
        learn.events.emit("run_end", status=status)
        try:  # what exists; the error that stopped the run stays the one raised
            _write_outputs(learn, folder, console, status, interpret=False)
        except Exception as report_error:
            log.warning(f"could not write the report: {first_line(report_error)}")
        raise
    finally:
        if tensorboard is not None:
            tensorboard.close()
    if cfg.tta:
        _evaluate_tta(learn, cfg.tta, console)
    learn.events.emit("run_end", status="completed")
    _write_outputs(learn, folder, console, "completed", interpret=True)
    _print_end(learn, folder, console)
    return learn


def _evaluate_tta(learn: Learner, n: int, console: Console) -> None:
    """The final model's validation with and without TTA, printed and in the events."""
    plain, tta = learn.validate(), learn.validate_tta(n)
    learn.events.emit("tta", n=n, plain=plain, tta=tta)
    figures = ", ".join(f"{k} {tta[k]:.4f} (without: {plain[k]:.4f})" for k in tta)
    console.print(f"TTA ({n} augmented passes blended with the plain one): {figures}",
                  highlight=False)  # fmt: skip


def _data(cfg: TrainConfig, console: Console) -> tuple[CheckReport, ImageDataLoaders]:
    """The data check's report and the loaders, with a line saying what they hold."""
    # Decode every file once up front: problems are reported before any model is
    # built, and the loaders skip the unreadable files without opening them again.
    report = _check(cfg, console)
    report.print(console)
    dls = loaders(cfg, report)  # from the check's split: no second pass over the files
    kind = dls.task.classes_word
    console.print(
        f"data: {len(dls.train_items)} train / {len(dls.valid_items)} valid images, "
        f"{dls.c} {kind} ({', '.join(dls.vocab[:8])}{', ...' if dls.c > 8 else ''}), "
        f"device {dls.device}",
        highlight=False,
    )
    return report, dls


def _learner(cfg: TrainConfig, dls: ImageDataLoaders, console: Console, loss_func) -> Learner:
    return learner_for(
        dls,
        cfg.arch,
        loss_func=loss_func,
        decoder=cfg.decoder,
        pretrained=cfg.pretrained,
        weights=cfg.weights,
        metrics=dls.task.run_metrics,
        opt=cfg.opt,
        wd=cfg.wd,
        precision=cfg.precision,
        memory_budget=cfg.memory_budget,
        micro_bs=cfg.micro_bs,
        accumulate=cfg.accumulate,
        checkpointing=cfg.checkpointing,
        sync_bn=cfg.sync_bn,
        console=console,
    )


REGULARISATION = {"label_smoothing": "--label-smoothing", "mixup": "--mixup", "cutmix": "--cutmix"}


def check_regularisation(cfg: TrainConfig) -> None:
    """One line naming the flag for a bad label smoothing, MixUp or CutMix value."""
    for field, flag in REGULARISATION.items():
        value = getattr(cfg, field)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e308:
            raise SnugfitError(f"{flag}: expected a number >= 0 (0: off), got {value!r}")
    if cfg.label_smoothing >= 1:
        raise SnugfitError(
            f"--label-smoothing: expected a number >= 0 and < 1, got {cfg.label_smoothing!r}"
        )
    if cfg.mixup and cfg.cutmix:
        raise SnugfitError("--mixup, --cutmix: choose one of them (each mixes every batch)")


def regularisation(cfg: TrainConfig, task) -> tuple[LabelSmoothingCrossEntropy | None, list]:
    """The loss (None: the task's) and the callbacks that ``cfg``'s label smoothing,
    MixUp and CutMix ask for, refused where the task has no use for them."""
    check_regularisation(cfg)
    on = [flag for field, flag in REGULARISATION.items() if getattr(cfg, field)]
    if on and task.name == "segmentation":
        raise SnugfitError(
            f"{on[0]}: for classification only; segmentation has its own losses (--loss)"
        )
    if cfg.label_smoothing and task.multi_label:
        raise SnugfitError(
            "--label-smoothing: for single-label data only (multi-label data trains "
            "independent sigmoids; --mixup and --cutmix work there)"
        )
    loss = LabelSmoothingCrossEntropy(cfg.label_smoothing) if cfg.label_smoothing else None
    if cfg.mixup:
        return loss, [MixUp(cfg.mixup)]
    return loss, [CutMix(cfg.cutmix)] if cfg.cutmix else []


def _start_files(folder: RunFolder, cfg: TrainConfig, report: CheckReport, learn: Learner) -> None:
    """What is known before training (configuration, data check, a batch), and where
    the metrics and the event log go."""
    folder.root.mkdir(parents=True, exist_ok=True)
    cfg.to_json(folder.config)
    report.to_json(folder.check)
    learn.dls.show_batch(folder.batch_png)  # what the model sees: augmented, presized
    if cfg.resume is None:
        folder.metrics.unlink(missing_ok=True)  # a resumed run appends to its history
        folder.events.unlink(missing_ok=True)
    learn.recorder.csv_path = folder.metrics
    learn.events.add_sink(JsonLinesSink(folder.events))  # the events so far, then each new


def _print_end(learn: Learner, folder: RunFolder, console: Console) -> None:
    if learn.oom_events:
        console.print(
            f"recovered from {len(learn.oom_events)} out-of-memory error(s); "
            f"now micro-batch {learn.micro_bs}, {learn.precision}"
            f"{', checkpointing' if learn.checkpointing else ''} "
            f"(counts in {folder.metrics.name})",
            highlight=False,
        )
    done = f"saved model, config, metrics, plots and {folder.report.name} to {folder.root}"
    console.print(done, highlight=False)


def _check(cfg: TrainConfig, console: Console) -> CheckReport:
    """The data check; under torchrun rank 0 runs it and the others get its report
    (or its error), instead of every rank decoding every file."""
    if not distributed.active():
        return check_data(cfg, console)
    result: CheckReport | SnugfitError | None = None
    if distributed.is_main():
        try:
            result = check_data(cfg, console)
        except SnugfitError as e:  # every rank must stop with it, not wait for a report
            result = SnugfitError(str(e))
    result = distributed.from_main(result)
    if isinstance(result, SnugfitError):
        raise result
    return result


def _fit(learn: Learner, cfg: TrainConfig, cbs: list) -> None:
    if cfg.recipe == "auto":
        learn.auto_fit(
            cfg.epochs,
            head_epochs=cfg.head_epochs,
            precompute=cfg.precompute,
            lr_find=cfg.lr_find,
            schedule=cfg.schedule,
            sizes=cfg.sizes,
            cbs=cbs,
            resume=cfg.resume,
        )
    else:
        learn.fine_tune(
            cfg.epochs, base_lr=cfg.lr, freeze_epochs=cfg.freeze_epochs, cbs=cbs, resume=cfg.resume
        )


def _stopped(e: BaseException) -> str:
    """How a run that raised ``e`` ended, in words for the report."""
    if isinstance(e, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    if isinstance(e, NonFiniteLoss):
        return f"stopped: {e}"
    return f"failed: {first_line(e)}"


def _write_outputs(
    learn: Learner, folder: RunFolder, console: Console, status: str, interpret: bool
):
    """Plots, ``skipped.txt`` and ``report.html`` (with the interpretation of the
    final model when ``interpret``: the task's, `snugfit.infer.interpret.interpret`)."""
    found = {}
    if interpret:  # on every rank: under torchrun the predictions are gathered
        try:
            found = interpret_model(learn)
        except SnugfitError as e:  # e.g. no readable validation image: the report without it
            log.warning(f"report: no interpretation ({e})")
    if not distributed.is_main():
        return  # under torchrun, rank 0 writes them
    if learn.recorder.losses:
        learn.recorder.plot_loss(folder.loss_png)
        learn.recorder.plot_lr(folder.lr_png)
    write_skipped(learn.dls.skipped, folder.skipped, console)
    write_report(folder.root, status=status, **found)


def write_skipped(skipped: dict[str, str], path: Path, console: Console) -> None:
    """List unreadable files (never dropped silently) in ``path``."""
    if not skipped:
        path.unlink(missing_ok=True)
        return
    path.write_text("".join(f"{p}\t{why}\n" for p, why in sorted(skipped.items())))
    console.print(f"skipped {len(skipped)} unreadable file(s); list in {path}", highlight=False)
