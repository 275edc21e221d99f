"""A whole training run from a `TrainConfig`: data, model, fine_tune, outputs.

Shared by ``snugfit train`` and ``snugfit demo``. Everything a run produces goes
to ``cfg.out``: the model (safetensors + JSON), ``config.json``, ``check.json``
(`snugfit.check`: the data check run first), ``metrics.csv``,
``checkpoint.safetensors`` (resumable with ``--resume``),
``batch.png`` (an augmented batch), ``loss.png``, ``lr.png`` and, when some files could not be read, ``skipped.txt``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from rich.console import Console

from .callbacks import SaveCheckpoint
from .check import check_folder
from .config import TrainConfig
from .data import ImageDataLoaders
from .learner import Learner, vision_learner

log = logging.getLogger("snugfit")

CHECKPOINT = "checkpoint.safetensors"  # in the run folder; what --resume takes


def train(cfg: TrainConfig, console: Console | None = None) -> Learner:
    console = console or Console()
    torch.manual_seed(cfg.seed)  # the new head's initialisation
    # Decode every file once up front: problems are reported before any model is
    # built, and the loaders skip the unreadable files without opening them again.
    report = check_folder(cfg.data, valid_pct=cfg.valid_pct, seed=cfg.seed, console=console)
    report.print(console)
    dls = ImageDataLoaders.from_folder(
        cfg.data,
        valid_pct=cfg.valid_pct,
        seed=cfg.seed,
        bs=cfg.bs,
        size=cfg.size,
        num_workers=cfg.num_workers,
        device=cfg.device,
        flip=cfg.flip,
        unreadable=report.unreadable_files,
    )
    console.print(
        f"data: {len(dls.train_items)} train / {len(dls.valid_items)} valid images, "
        f"{dls.c} classes ({', '.join(dls.vocab[:8])}{', ...' if dls.c > 8 else ''}), "
        f"device {dls.device}",
        highlight=False,
    )
    learn = vision_learner(
        dls,
        cfg.arch,
        pretrained=cfg.pretrained,
        weights=cfg.weights,
        metrics=("accuracy", "error_rate"),
        opt=cfg.opt,
        wd=cfg.wd,
        precision=cfg.precision,
        memory_budget=cfg.memory_budget,
        micro_bs=cfg.micro_bs,
        accumulate=cfg.accumulate,
        checkpointing=cfg.checkpointing,
        console=console,
    )
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg.to_json(out / "config.json")
    report.to_json(out / "check.json")
    dls.show_batch(out / "batch.png")  # what the model sees: augmented, presized
    csv_path = out / "metrics.csv"
    if cfg.resume is None:
        csv_path.unlink(missing_ok=True)  # a resumed run appends to its history
    learn.recorder.csv_path = csv_path
    # One resumable checkpoint, rewritten atomically after every epoch (and every
    # N batches, and on Ctrl-C).
    cbs = [SaveCheckpoint(out / CHECKPOINT, every_batches=cfg.checkpoint_every)]
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
    learn.save(out / "model")
    learn.recorder.plot_loss(out / "loss.png")
    learn.recorder.plot_lr(out / "lr.png")
    write_skipped(dls.skipped, out / "skipped.txt", console)
    if learn.oom_events:
        console.print(
            f"recovered from {len(learn.oom_events)} out-of-memory error(s); "
            f"now micro-batch {learn.micro_bs}, {learn.precision}"
            f"{', checkpointing' if learn.checkpointing else ''} (counts in metrics.csv)",
            highlight=False,
        )
    console.print(f"saved model, config, metrics and plots to {out}", highlight=False)
    return learn


def write_skipped(skipped: dict[str, str], path: Path, console: Console) -> None:
    """List unreadable files (never dropped silently) in ``path``."""
    if not skipped:
        path.unlink(missing_ok=True)
        return
    path.write_text("".join(f"{p}\t{why}\n" for p, why in sorted(skipped.items())))
    console.print(f"skipped {len(skipped)} unreadable file(s); list in {path}", highlight=False)
