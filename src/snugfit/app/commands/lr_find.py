"""``snugfit lr-find``: fastai's learning-rate finder on the model as training starts it."""

from __future__ import annotations

import argparse

from snugfit.app.arguments import (
    add_csv_args,
    add_folder_args,
    add_memory_args,
    add_segmentation_args,
    fraction,
    image_size,
    non_negative_int,
    positive_int,
)
from snugfit.app.config import TrainConfig

NAME = "lr-find"


def add_parser(subparsers) -> None:
    d = TrainConfig("")
    lf = subparsers.add_parser(
        NAME,
        help="learning-rate finder: sweep, suggestions, plot",
        description="fastai's lr_find on the model as training would start it (head only, "
        "or --unfrozen), on the data as train reads it (the same check, split and data "
        "options); prints the suggestions and saves the plot.",
    )
    lf.add_argument("data", help="image folder, CSV dataset or segmentation folder (as for train)")
    lf.add_argument("--arch", default=d.arch, help=f"timm model name (default {d.arch})")
    lf.add_argument("--weights", default=None, help="local weights file")
    lf.add_argument(
        "--no-pretrained", dest="pretrained", action="store_false", help="start from random weights"
    )
    lf.add_argument("--bs", type=positive_int, default=d.bs)
    lf.add_argument(
        "--size", type=image_size, default=d.size, help="a side (224) or HEIGHTxWIDTH (1400x2100)"
    )
    lf.add_argument(
        "--crop", type=image_size, default=None, help="segmentation: the training crop, if any"
    )
    lf.add_argument(
        "--decoder", default=d.decoder, choices=["unet", "fpn", "deeplabv3plus"],
        help=f"segmentation: the decoder (default {d.decoder})",
    )  # fmt: skip
    lf.add_argument("--valid-pct", type=fraction, default=None, help="as for train")
    add_folder_args(lf)
    add_segmentation_args(lf)
    add_csv_args(lf)
    lf.add_argument("--no-flip", dest="flip", action="store_false", help="no random flips")
    lf.add_argument("--seed", type=int, default=d.seed)
    lf.add_argument("--unfrozen", action="store_true", help="sweep with every layer training")
    lf.add_argument("--num-it", type=positive_int, default=100)
    lf.add_argument("--workers", dest="num_workers", type=non_negative_int, default=None)
    lf.add_argument("--plot", default="lr_find.png", help="PNG to write (default lr_find.png)")
    add_memory_args(lf)


def run(args: argparse.Namespace) -> None:
    from rich.console import Console

    from snugfit.app.dataset import check_data, data_config, loaders
    from snugfit.train.factory import learner_for

    cfg = data_config(args, "bs", "crop", "flip", "num_workers", "decoder")
    console = Console(stderr=True)
    report = check_data(cfg, console)  # the problems train would report, and its split
    report.print(console)
    dls = loaders(cfg, report)
    learn = learner_for(
        dls,
        args.arch,
        decoder=cfg.decoder,
        pretrained=args.pretrained,
        weights=args.weights,
        precision=args.precision,
        memory_budget=args.memory_budget,
    )
    if args.unfrozen:
        learn.unfreeze()
    result = learn.lr_find(num_it=args.num_it)
    for name, lr in result.suggestions.items():
        print(f"{name}\t{lr:.3e}")
    print(f"suggested\t{result.suggested:.3e}")
    print(f"plot\t{result.plot(args.plot)}")
