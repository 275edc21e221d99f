"""``snugfit plan``: the memory plan of both phases of fine_tune, as a what-if."""

from __future__ import annotations

import argparse
from pathlib import Path

from snugfit.app.arguments import (
    add_memory_args,
    add_segmentation_args,
    image_size,
    positive_int,
)
from snugfit.app.config import TrainConfig
from snugfit.errors import SnugfitError

NAME = "plan"


def add_parser(subparsers) -> None:
    d = TrainConfig("")
    pl = subparsers.add_parser(
        NAME,
        help="memory plan before training: would this model, size and batch fit a budget?",
        description="Predict peak memory for each candidate (precision x checkpointing x "
        "micro-batch) for the frozen and the unfrozen phase of fine_tune, and choose the "
        "fastest that fits. Works as a what-if on a machine without that GPU.",
    )
    pl.add_argument(
        "data",
        nargs="?",
        default=None,
        help="image folder (for the number of classes; a segmentation folder, images/ and "
        "masks/, plans a segmentation model); or give --classes",
    )
    pl.add_argument(
        "--classes",
        type=positive_int,
        default=2,
        help="number of classes when no DATA is given (default 2)",
    )
    pl.add_argument("--arch", default=d.arch, help=f"timm model name (default {d.arch})")
    pl.add_argument(
        "--size", type=image_size, default=d.size, help="a side (224) or HEIGHTxWIDTH (1400x2100)"
    )
    pl.add_argument(
        "--crop", type=image_size, default=None, help="segmentation: the training crop, if any"
    )
    pl.add_argument(
        "--decoder",
        default=None,
        choices=["unet", "fpn", "deeplabv3plus"],
        help="plan a segmentation model with this decoder on --arch (default for a "
        "segmentation folder: unet)",
    )
    add_segmentation_args(pl)
    pl.add_argument("--bs", type=positive_int, default=d.bs, help="effective batch size")
    pl.add_argument("--opt", default=d.opt, choices=["adamw", "sgd", "rmsprop"])
    pl.add_argument(
        "--device-type",
        default="cuda",
        choices=["cuda", "cpu"],
        help="the device the budget is for (default cuda)",
    )
    add_memory_args(pl, required=True)


def run(args: argparse.Namespace) -> None:
    """Print the memory plan of both phases of fine_tune (frozen body, then all)."""
    from rich.console import Console

    from snugfit.sizes import format_size
    from snugfit.train.learner import Learner

    console = Console()
    model, infer = _model(args)  # random weights: memory does not depend on their values
    learn = Learner(None, model, opt=args.opt, precision=args.precision, console=console,
                    infer=infer)  # fmt: skip
    size = args.crop or args.size
    for phase, freeze in (("frozen body (head only)", learn.freeze), ("unfrozen", learn.unfreeze)):
        freeze()
        console.print(
            f"\n[bold]{args.arch} @ {format_size(size)}px, effective bs {args.bs}, "
            f"{args.memory_budget} {args.device_type}: {phase}[/bold]"
        )
        learn.plan(args.memory_budget, bs=args.bs, size=size, apply=False,
                   device_type=args.device_type)  # fmt: skip


def _model(args: argparse.Namespace):
    """The network to plan (nothing fetched) and what the learner must know of its task:
    a classifier, or a segmentation model for a segmentation folder or a ``--decoder``."""
    from snugfit import models
    from snugfit.data.seg_layouts import is_segmentation_folder

    if args.masks is not None and args.data is None:
        raise SnugfitError("--masks: give the DATA folder it is in")
    if args.images is not None and args.masks is None:
        raise SnugfitError("--images: give the masks' folder too (--masks)")
    seg = args.decoder is not None or args.masks is not None
    seg = seg or (args.data is not None and is_segmentation_folder(args.data))
    if args.data is None:
        vocab = [f"class_{i}" for i in range(args.classes)]
    elif seg and (Path(args.data) / "codes.txt").is_file():
        from snugfit.data.seg_items import read_codes

        vocab = read_codes(Path(args.data) / "codes.txt")
    elif seg:
        from snugfit.data.segmentation import SegmentationDataLoaders

        folders = {"masks": args.masks, "images": args.images}
        vocab = SegmentationDataLoaders.from_folder(args.data, num_workers=0, **folders).vocab
    else:
        from snugfit.data.loaders import ImageDataLoaders

        vocab = ImageDataLoaders.from_folder(args.data, num_workers=0).vocab
    if seg:
        model = models.create_segmentation_model(
            args.arch, len(vocab), decoder=args.decoder or "unet", pretrained=False
        )
        return model, {"task": "segmentation", "vocab": list(vocab)}
    return models.create_model(args.arch, len(vocab), pretrained=False), None
