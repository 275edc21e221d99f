"""``snugfit train``: fine-tune a classifier on a folder of images (or a CSV of labels).

The options map onto `TrainConfig`; `snugfit.app.run.train` does the run. On
Ctrl-C it prints the command that resumes the run from its checkpoint; a write
that fails (disk full, permission denied, read-only filesystem) ends it with one
line saying what could not be written and why, which checkpoint is intact, and the
command that resumes from it.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from snugfit.app.arguments import (
    DATA_HELP,
    add_csv_args,
    add_folder_args,
    add_memory_args,
    add_segmentation_args,
    below_one,
    fraction,
    image_size,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from snugfit.app.config import TrainConfig
from snugfit.app.run_folder import CHECKPOINT, TENSORBOARD, RunFolder
from snugfit.errors import SnugfitError, WriteError

NAME = "train"


def add_parser(subparsers) -> None:
    d = TrainConfig("")
    t = subparsers.add_parser(
        NAME, help="fine-tune a classifier on a folder of images (or a CSV of labels)"
    )
    t.add_argument("data", help=DATA_HELP)
    t.add_argument("--arch", default=d.arch, help=f"timm model name (default {d.arch})")
    _recipe_args(t, d)
    _checklist_args(t, d)
    _model_args(t, d)
    _data_args(t, d)
    _regularisation_args(t, d)
    _memory_args(t, d)
    t.add_argument("--out", default=d.out, help=f"run folder (default {d.out})")
    t.add_argument(
        "--tensorboard",
        action="store_true",
        help=f"also log each epoch's losses, metrics and learning rates to OUT/{TENSORBOARD} "
        "(needs: pip install 'snugfit[tensorboard]')",
    )


def _recipe_args(t: argparse.ArgumentParser, d: TrainConfig) -> None:
    """What to train, how long, and resuming."""
    t.add_argument(
        "--epochs",
        type=non_negative_int,
        default=d.epochs,
        help="epochs with the whole network unfrozen (default: auto 2, or 8 for "
        "segmentation, where the decoder learns with the encoder; fine_tune 2)",
    )
    t.add_argument(
        "--freeze-epochs",
        type=non_negative_int,
        default=d.freeze_epochs,
        help="fine_tune: epochs training only the head first",
    )
    t.add_argument(
        "--recipe",
        default=d.recipe,
        choices=["auto", "fine_tune"],
        help="auto: the automated checklist (precompute, lr_find, head, unfreeze, "
        "early stopping, best weights); fine_tune: fastai's fine_tune",
    )
    t.add_argument(
        "--resume", default=None, help=f"continue a run exactly from its OUT/{CHECKPOINT}"
    )
    t.add_argument(
        "--checkpoint-every",
        type=positive_int,
        default=None,
        metavar="N",
        help="also write the checkpoint every N batches (default: after each epoch)",
    )


def _checklist_args(t: argparse.ArgumentParser, d: TrainConfig) -> None:
    """The automated checklist's switches (``--recipe auto``)."""
    t.add_argument(
        "--head-epochs",
        type=non_negative_int,
        default=d.head_epochs,
        help="auto: head epochs on precomputed features (default 4, 0 for segmentation; "
        "0: no head phase; when the body stays frozen the head is solved instead, "
        "unless --no-solve-head)",
    )
    t.add_argument(
        "--no-precompute",
        dest="precompute",
        action="store_false",
        help="auto: train the head on images, not on precomputed features",
    )
    t.add_argument(
        "--no-solve-head",
        dest="solve_head",
        action="store_false",
        help="auto, body frozen: train the head by epochs instead of solving it on the "
        "precomputed features (L-BFGS)",
    )
    t.add_argument(
        "--no-lr-find",
        dest="lr_find",
        action="store_false",
        help="auto: fixed head learning rate instead of lr_find",
    )
    t.add_argument(
        "--schedule",
        default=d.schedule,
        choices=["one_cycle", "sgdr"],
        help="auto: schedule of the unfrozen phase",
    )
    t.add_argument(
        "--head-scale",
        type=positive_float,
        default=d.head_scale,
        metavar="X",
        help="auto, when the body stays frozen (--unfreeze): the head phases see images at "
        "X times --size, where frozen ImageNet features are sharper (FixRes); the model "
        "keeps the size of the phase it is kept from (1: off)",
    )
    t.add_argument(
        "--unfreeze",
        default=d.unfreeze,
        choices=["auto", "yes", "no"],
        help="auto: train the whole network after the head: 'auto' when the images look "
        "unlike the pretraining data to the body's BatchNorm statistics (photos like "
        "ImageNet's keep the frozen body and the head trained on its features)",
    )
    t.add_argument(
        "--sizes",
        type=image_size,
        nargs="+",
        default=None,
        help="auto: progressive resizing of the unfrozen phase, e.g. 128 176 224 "
        "(or HEIGHTxWIDTH sizes)",
    )


def _model_args(t: argparse.ArgumentParser, d: TrainConfig) -> None:
    """Batch, image size, learning rate and the starting weights."""
    t.add_argument("--bs", type=positive_int, default=d.bs, help="batch size")
    t.add_argument(
        "--size",
        type=image_size,
        default=d.size,
        help="image size in pixels: a side (224) or HEIGHTxWIDTH (1400x2100)",
    )
    _segmentation_args(t, d)
    t.add_argument("--lr", type=positive_float, default=d.lr, help="fine_tune: base learning rate")
    t.add_argument(
        "--weights",
        default=None,
        help="local weights file (timm .safetensors/.pth, or efficientnet-pytorch)",
    )
    t.add_argument(
        "--no-pretrained", dest="pretrained", action="store_false", help="start from random weights"
    )


def _data_args(t: argparse.ArgumentParser, d: TrainConfig) -> None:
    """The split, a CSV dataset, augmentation, seed and decoding workers."""
    t.add_argument(
        "--valid-pct",
        type=fraction,
        default=None,
        help="split this fraction off train for validation (default: use DATA/val; 0.2 with --csv)",
    )
    add_folder_args(t)
    add_segmentation_args(t)
    add_csv_args(t)
    t.add_argument(
        "--no-flip",
        dest="flip",
        action="store_false",
        help="no random horizontal flips (for text, digits, ...)",
    )
    t.add_argument("--seed", type=int, default=d.seed)
    t.add_argument(
        "--workers",
        dest="num_workers",
        type=non_negative_int,
        default=None,
        help="decoding worker processes",
    )


def _regularisation_args(t: argparse.ArgumentParser, d: TrainConfig) -> None:
    """Label smoothing, MixUp and CutMix (classification; 0: off)."""
    g = t.add_argument_group(
        "regularisation", "classification only; 0 turns each off (the default)"
    )
    g.add_argument(
        "--label-smoothing",
        type=below_one,
        default=d.label_smoothing,
        metavar="EPS",
        help="cross-entropy against targets smoothed by EPS, e.g. 0.1 (fastai's "
        "LabelSmoothingCrossEntropy(eps), timm's --smoothing); single-label data only",
    )
    g.add_argument(
        "--mixup",
        type=non_negative_float,
        default=d.mixup,
        metavar="ALPHA",
        help="blend each training batch with a shuffled copy, weight ~ Beta(ALPHA, ALPHA), "
        "e.g. 0.4 (fastai's MixUp, timm's --mixup)",
    )
    g.add_argument(
        "--cutmix",
        type=non_negative_float,
        default=d.cutmix,
        metavar="ALPHA",
        help="paste a box from a shuffled copy of each training batch, area ~ Beta(ALPHA, "
        "ALPHA), e.g. 1.0 (fastai's CutMix, timm's --cutmix); not with --mixup",
    )
    t.add_argument(
        "--ema",
        type=fraction,
        default=None,
        metavar="DECAY",
        help="average the weights after every step with this decay, e.g. 0.999 (timm's "
        "--model-ema-decay, with a warm-up): each epoch validates the average, and the "
        "model saved is the average",
    )
    t.add_argument(
        "--tta",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="also evaluate the final model with test-time augmentation: the mean of N "
        "augmented passes blended with the plain one (fastai's learn.tta; 0: off)",
    )


def _memory_args(t: argparse.ArgumentParser, d: TrainConfig) -> None:
    """Precision, memory budget and settings, optimizer and device."""
    add_memory_args(t)
    t.add_argument(
        "--micro-bs",
        type=positive_int,
        default=None,
        help="micro-batch size (--bs stays the effective batch)",
    )
    t.add_argument(
        "--accumulate",
        type=positive_int,
        default=None,
        help="micro-batches per batch (gradient accumulation steps)",
    )
    t.add_argument("--checkpointing", action="store_true", help="activation checkpointing")
    t.add_argument(
        "--sync-bn",
        action="store_true",
        help="under torchrun: BatchNorm statistics over all GPUs (SyncBatchNorm); "
        "turns OOM recovery off",
    )
    t.add_argument("--opt", default=d.opt, choices=["adamw", "sgd", "rmsprop"])
    t.add_argument("--wd", type=non_negative_float, default=d.wd, help="decoupled weight decay")
    t.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")


def _segmentation_args(t: argparse.ArgumentParser, d: TrainConfig) -> None:
    g = t.add_argument_group(
        "segmentation", "for a folder of images/ and masks/ (a class index per pixel, 255 void)"
    )
    g.add_argument(
        "--crop",
        type=image_size,
        default=None,
        help="train on random crops of this size out of the images at --size "
        "(e.g. 512 out of 1400x2100); validation and prediction see whole images",
    )
    g.add_argument(
        "--decoder",
        default=d.decoder,
        choices=["unet", "fpn", "deeplabv3plus"],
        help=f"segmentation-models-pytorch decoder on the --arch encoder (default {d.decoder})",
    )
    g.add_argument(
        "--loss",
        default=d.loss,
        choices=["ce", "dice_ce"],
        help="ce: cross-entropy ignoring void; dice_ce: Dice plus cross-entropy",
    )


def run(args: argparse.Namespace) -> int:
    """Train; on Ctrl-C or a failed write, print the command that resumes
    (``args.argv``: the words typed)."""
    from snugfit.app.run import train

    options = {k: v for k, v in vars(args).items() if k not in ("command", "argv")}
    cfg = TrainConfig(**options)
    ckpt = RunFolder(Path(cfg.out)).checkpoint
    before = _mtime(ckpt)
    try:
        train(cfg)
    except KeyboardInterrupt:
        resume = _resumable(ckpt, before, cfg)
        print("snugfit: interrupted", file=sys.stderr)
        if resume is not None:
            print(f"snugfit: resume with: {_resume_command(args, resume)}", file=sys.stderr)
        return 130
    except WriteError as e:
        raise SnugfitError(_stopped_on_write(e, _resumable(ckpt, before, cfg), args)) from e
    return 0


def _resumable(ckpt: Path, before: int | None, cfg: TrainConfig) -> str | None:
    """The checkpoint that continues the run: only one this run wrote (or the one it
    resumed from), not one an earlier run left in the folder."""
    fresh = ckpt.is_file() and _mtime(ckpt) != before
    return str(ckpt) if fresh else cfg.resume


def _resume_command(args: argparse.Namespace, resume: str) -> str:
    return shlex.join(["snugfit", *_without_resume(args.argv), "--resume", resume])


def _stopped_on_write(e: WriteError, resume: str | None, args: argparse.Namespace) -> str:
    """The one line a failed write ends the run with: what and why, what is intact,
    how to go on."""
    from snugfit.saving import read_position
    from snugfit.saving.disk import fix_for

    p = read_position(resume) if resume is not None else None
    if p is None:
        return f"{e}; no checkpoint was written yet: {fix_for(e)}, then run the same command again"
    at = f"it goes on at fit {p['fit_index']}, epoch {p['epoch']}, batch {p['iter']}"
    return f"{e}; {resume} is intact ({at}): {fix_for(e)}, then resume with: " + _resume_command(
        args, resume
    )


def _mtime(path: Path) -> int | None:
    return path.stat().st_mtime_ns if path.is_file() else None


def _without_resume(argv: list[str]) -> list[str]:
    out, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word == "--resume":
            skip = True
        elif not word.startswith("--resume="):
            out.append(word)
    return out
