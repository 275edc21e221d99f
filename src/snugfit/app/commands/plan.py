"""``snugfit plan``: the memory plan of both phases of fine_tune, as a what-if."""

from __future__ import annotations

import argparse

from snugfit.app.arguments import add_memory_args, image_size, positive_int
from snugfit.app.config import TrainConfig

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
        help="image folder (for the number of classes); or give --classes",
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

    from snugfit.models import create_model
    from snugfit.train.learner import Learner

    n_classes = args.classes
    if args.data is not None:
        from snugfit.data.loaders import ImageDataLoaders

        n_classes = ImageDataLoaders.from_folder(args.data, num_workers=0).c
    console = Console()
    # Random weights: memory does not depend on their values, and nothing is fetched.
    model = create_model(args.arch, n_classes, pretrained=False)
    learn = Learner(None, model, opt=args.opt, precision=args.precision, console=console)
    for phase, freeze in (("frozen body (head only)", learn.freeze), ("unfrozen", learn.unfreeze)):
        freeze()
        console.print(
            f"\n[bold]{args.arch} @ {args.size}px, effective bs {args.bs}, "
            f"{args.memory_budget} {args.device_type}: {phase}[/bold]"
        )
        learn.plan(
            args.memory_budget,
            bs=args.bs,
            size=args.size,
            apply=False,
            device_type=args.device_type,
        )
