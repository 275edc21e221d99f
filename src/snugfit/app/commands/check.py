"""``snugfit check``: check an image folder, a CSV dataset or a segmentation folder
before training on it."""

from __future__ import annotations

import argparse

from snugfit.app.arguments import (
    DATA_HELP,
    add_csv_args,
    add_folder_args,
    add_segmentation_args,
    fraction,
    image_size,
)
from snugfit.app.config import TrainConfig
from snugfit.errors import SnugfitError

NAME = "check"


def add_parser(subparsers) -> None:
    d = TrainConfig("")
    ck = subparsers.add_parser(
        NAME,
        help="check an image folder, CSV dataset or segmentation folder: counts, unreadable "
        "files, duplicates, imbalance",
        description="Decode every image of DATA (as train would split it) and report usable "
        "images per class (multi-label: per label) and split, unreadable files with the "
        "reason, CSV rows naming missing files, identical files (train/valid leaks, two "
        "labels, repeats), class imbalance, tiny images (for --size), images over Pillow's "
        "pixel limit, empty class folders "
        "and folders not followed (a loop, a folder already read: each real folder is "
        "read once; a run folder inside the data). A segmentation folder (DATA/images and DATA/masks, optional codes.txt and "
        "valid.txt; or PASCAL VOC's JPEGImages and SegmentationClass; or a CSV of "
        "run-length masks, as Kaggle's Understanding Clouds ships them) "
        "gets each class's pixel share per split, and images without a mask, masks without "
        "an image, unreadable, colour or 16-bit masks, image/mask size mismatches, mask "
        "values that are not classes and run-length rows that cannot be used. Exit status "
        "0 when training can use the data.",
    )
    ck.add_argument("data", help=DATA_HELP)
    ck.add_argument(
        "--valid-pct",
        type=fraction,
        default=None,
        help="split this fraction off train for validation (default: use DATA/val, or "
        "DATA/valid.txt for a segmentation folder; else 0.2)",
    )
    ck.add_argument(
        "--size",
        type=image_size,
        default=d.size,
        help="the training size, a side (224) or HEIGHTxWIDTH: images with a side under a "
        "quarter of its shorter side are listed as tiny (training enlarges them over 4x)",
    )
    add_folder_args(ck)
    add_segmentation_args(ck)
    add_csv_args(ck)
    ck.add_argument("--seed", type=int, default=d.seed, help="seed of the random split")
    ck.add_argument("--json", default=None, help="also write the report as JSON to this file")


def run(args: argparse.Namespace) -> None:
    from rich.console import Console

    from snugfit.app.dataset import check_data, data_config

    report = check_data(data_config(args))
    report.print(Console())
    if args.json is not None:
        try:
            print(f"report: {report.to_json(args.json)}")
        except OSError as e:
            raise SnugfitError(f"{args.json}: cannot write the report ({e.strerror})") from None
