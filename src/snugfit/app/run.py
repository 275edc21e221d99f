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
from dataclasses import replace
from pathlib import Path

import torch
from rich.console import Console

from snugfit import distributed
from snugfit.app.config import TrainConfig
from snugfit.app.dataset import check_data, is_segmentation_data, loaders
from snugfit.app.report import write_report
from snugfit.app.run_folder import RunFolder, skipped_summary
from snugfit.callbacks import EMA, CutMix, MixUp, SaveCheckpoint, TensorBoardCallback
from snugfit.callbacks.ema import check_decay
from snugfit.data.check_report import CheckReport
from snugfit.data.loaders import ImageDataLoaders, resolve_device
from snugfit.errors import NonFiniteLoss, SnugfitError, WriteError, first_line
from snugfit.events import JsonLinesSink
from snugfit.infer.interpret import interpret as interpret_model
from snugfit.saving.atomic import atomic_write
from snugfit.saving.disk import check_writable, optional
from snugfit.tasks import LabelSmoothingCrossEntropy
from snugfit.train.factory import learner_for
from snugfit.train.learner import Learner
from snugfit.train.recipe_defaults import defaults_for

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
    check_classification_only(cfg)
    if main:  # and an --out that cannot be written
        check_writable(folder.root, "--out")
    torch.manual_seed(cfg.seed)  # the new head's initialisation
    report, dls = _data(cfg, console)
    loss_func, mixing = regularisation(cfg, dls.task)
    learn = _learner(cfg, dls, console, loss_func)
    cfg = _with_model_defaults(cfg, learn)  # config.json records the epochs that run
    learn.events.start_run(out=str(folder.root), resume=cfg.resume)
    unwritten: list[str] = []  # outputs a failed write left out (each warned about)
    if main and cfg.resume is None and folder.holds_run():
        kept = folder.set_aside()
        console.print(f"the earlier run in {folder.root} is kept in {kept}", highlight=False)
    sink = _start_files(folder, cfg, report, learn, unwritten) if main else None
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
        # A disk fault stops the run with one line: the outputs hit it again quietly.
        warn = not isinstance(e, WriteError)
        if sink is not None:
            sink.warn = warn
        learn.events.emit("run_end", status=status)
        try:  # what exists; the error that stopped the run stays the one raised
            _write_outputs(learn, folder, console, status, interpret=False, warn=warn)
        except Exception as report_error:
            log.warning(f"could not write the report: {first_line(report_error)}")
        raise
    finally:
        if tensorboard is not None:
            tensorboard.close()
    if cfg.tta:
        _evaluate_tta(learn, cfg.tta, console)
    learn.events.emit("run_end", status="completed")
    _write_outputs(learn, folder, console, "completed", interpret=True, unwritten=unwritten)
    _print_end(learn, folder, console, unwritten)
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
SEGMENTATION_LOSSES = "for classification only; segmentation has its own losses (--loss)"


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


def check_classification_only(cfg: TrainConfig) -> None:
    """Classification's flags refused at once for a segmentation folder: before
    minutes of data checking, and for ``--tta`` before the whole training (its
    evaluation runs at the end)."""
    if not is_segmentation_data(cfg):
        return
    on = [flag for field, flag in REGULARISATION.items() if getattr(cfg, field)]
    if on:
        raise SnugfitError(f"{on[0]}: {SEGMENTATION_LOSSES}")
    if cfg.tta:
        raise SnugfitError(
            "--tta: for classification only; a segmentation model's masks are averaged "
            "over flips at prediction (snugfit predict --flip)"
        )


def regularisation(cfg: TrainConfig, task) -> tuple[LabelSmoothingCrossEntropy | None, list]:
    """The loss (None: the task's) and the callbacks that ``cfg``'s label smoothing,
    MixUp and CutMix ask for, refused where the task has no use for them."""
    check_regularisation(cfg)
    on = [flag for field, flag in REGULARISATION.items() if getattr(cfg, field)]
    if on and task.name == "segmentation":
        raise SnugfitError(f"{on[0]}: {SEGMENTATION_LOSSES}")
    if cfg.label_smoothing and task.multi_label:
        raise SnugfitError(
            "--label-smoothing: for single-label data only (multi-label data trains "
            "independent sigmoids; --mixup and --cutmix work there)"
        )
    loss = LabelSmoothingCrossEntropy(cfg.label_smoothing) if cfg.label_smoothing else None
    if cfg.mixup:
        return loss, [MixUp(cfg.mixup)]
    return loss, [CutMix(cfg.cutmix)] if cfg.cutmix else []


def _start_files(
    folder: RunFolder, cfg: TrainConfig, report: CheckReport, learn: Learner, unwritten: list
) -> JsonLinesSink:
    """What is known before training (configuration, data check, a batch), and where
    the metrics and the event log go; returns the event log's sink.

    Each file is written atomically; the configuration must be, the others a run
    can do without (a failed write warns, goes into ``unwritten``, and the run goes on).
    """
    cfg.to_json(folder.config)
    with optional(folder.check.name, unwritten=unwritten):
        atomic_write(folder.check, report.to_json)
    with optional(folder.batch_png.name, unwritten=unwritten):  # augmented, presized
        atomic_write(folder.batch_png, learn.dls.show_batch)
    if cfg.resume is None:
        folder.metrics.unlink(missing_ok=True)  # a resumed run appends to its history
        folder.events.unlink(missing_ok=True)
    learn.recorder.csv_path = folder.metrics
    sink = JsonLinesSink(folder.events)
    learn.events.add_sink(sink)  # the events so far, then each new
    return sink


def _print_end(learn: Learner, folder: RunFolder, console: Console, unwritten: list) -> None:
    if learn.oom_events:
        console.print(
            f"recovered from {len(learn.oom_events)} out-of-memory error(s); "
            f"now micro-batch {learn.micro_bs}, {learn.precision}"
            f"{', checkpointing' if learn.checkpointing else ''} "
            f"(counts in {folder.metrics.name})",
            highlight=False,
        )
    done = f"saved model, config, metrics, plots and {folder.report.name} to {folder.root}"
    if unwritten:
        done = f"saved the model to {folder.root}; not written: {', '.join(unwritten)} (see above)"
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


def _with_model_defaults(cfg: TrainConfig, learn: Learner) -> TrainConfig:
    """``cfg`` with ``epochs`` and ``head_epochs`` left None set: `auto_fit`'s
    defaults for the model (`recipe_defaults.defaults_for`), or fine_tune's 2 epochs."""
    defaults = defaults_for(learn.model)
    if cfg.epochs is None:
        cfg = replace(cfg, epochs=defaults.epochs if cfg.recipe == "auto" else 2)
    if cfg.head_epochs is None:
        cfg = replace(cfg, head_epochs=defaults.head_epochs)
    return cfg


def _fit(learn: Learner, cfg: TrainConfig, cbs: list) -> None:
    if cfg.recipe == "auto":
        learn.auto_fit(
            cfg.epochs,
            head_epochs=cfg.head_epochs,
            precompute=cfg.precompute,
            lr_find=cfg.lr_find,
            schedule=cfg.schedule,
            sizes=cfg.sizes,
            head_scale=cfg.head_scale,
            solve_head=cfg.solve_head,
            unfreeze={"yes": True, "no": False}.get(cfg.unfreeze, cfg.unfreeze),
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
    if isinstance(e, (NonFiniteLoss, WriteError)):
        return f"stopped: {e}"
    return f"failed: {first_line(e)}"


def _write_outputs(
    learn: Learner,
    folder: RunFolder,
    console: Console,
    status: str,
    interpret: bool,
    warn: bool = True,
    unwritten: list | None = None,
):
    """Plots, ``skipped.txt`` and ``report.html`` (with the interpretation of the
    final model when ``interpret``: the task's, `snugfit.infer.interpret.interpret`).

    Each can be done without: one that cannot be written is warned about (with
    ``warn``; else logged at debug level), put in ``unwritten``, and the others
    are still written.
    """
    found = {}
    if interpret:  # on every rank: under torchrun the predictions are gathered
        try:
            found = interpret_model(learn)
        except SnugfitError as e:  # e.g. no readable validation image: the report without it
            log.warning(f"report: no interpretation ({e})")
    if not distributed.is_main():
        return  # under torchrun, rank 0 writes them
    writes = []
    if learn.recorder.losses:
        writes += [
            (folder.loss_png, learn.recorder.plot_loss),
            (folder.lr_png, learn.recorder.plot_lr),
        ]
    writes.append((folder.skipped, lambda path: write_skipped(learn.dls.skipped, path, console)))
    writes.append((folder.report, lambda _: write_report(folder.root, status=status, **found)))
    for path, write in writes:
        with optional(path.name, warn, unwritten):
            write(path)


def write_skipped(skipped: dict[str, str], path: Path, console: Console) -> None:
    """List unreadable files (never dropped silently) in ``path``."""
    if not skipped:
        path.unlink(missing_ok=True)
        return
    text = "".join(f"{p}\t{why}\n" for p, why in sorted(skipped.items()))
    atomic_write(path, lambda tmp: tmp.write_text(text))
    console.print(f"skipped {skipped_summary(skipped.values())}; list in {path}", highlight=False)
