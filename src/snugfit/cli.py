"""The ``snugfit`` command line: train, predict, demo.

Bad input ends with one line, ``snugfit: error: <what is wrong>``, and exit
status 2; no traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .config import TrainConfig
from .errors import SnugfitError


def _number(name: str, cast, ok, accepted: str):
    """An argparse type that names the argument and the accepted form on bad input."""

    def parse(text):
        try:
            value = cast(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"{name} must be {accepted}, got {text!r}")
        return value

    return parse


def _positive_int(name):
    return _number(name, int, lambda v: v >= 1, "a positive integer")


def _non_negative_int(name):
    return _number(name, int, lambda v: v >= 0, "an integer ≥ 0")


def _positive_float(name):
    return _number(name, float, lambda v: v > 0 and v != float("inf"), "a positive number")


_fraction = _number("--valid-pct", float, lambda v: 0 < v < 1, "between 0 and 1")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="snugfit",
        description="Fine-tune pretrained image classifiers that fit your machine.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    d = TrainConfig("")

    t = sub.add_parser("train", help="fine-tune a classifier on a folder of images")
    t.add_argument(
        "data", help="folder: DATA/train/<class>/*, DATA/val/<class>/* (or DATA/<class>/*)"
    )
    t.add_argument("--arch", default=d.arch, help=f"timm model name (default {d.arch})")
    t.add_argument(
        "--epochs",
        type=_non_negative_int("--epochs"),
        default=d.epochs,
        help="epochs with the whole network unfrozen",
    )
    t.add_argument(
        "--freeze-epochs",
        type=_non_negative_int("--freeze-epochs"),
        default=d.freeze_epochs,
        help="epochs training only the head first",
    )
    t.add_argument("--bs", type=_positive_int("--bs"), default=d.bs, help="batch size")
    t.add_argument("--size", type=_positive_int("--size"), default=d.size, help="image size (px)")
    t.add_argument("--lr", type=_positive_float("--lr"), default=d.lr, help="base learning rate")
    t.add_argument(
        "--weights",
        default=None,
        help="local weights file (timm .safetensors/.pth, or efficientnet-pytorch)",
    )
    t.add_argument(
        "--no-pretrained", dest="pretrained", action="store_false", help="start from random weights"
    )
    t.add_argument(
        "--valid-pct",
        type=_fraction,
        default=None,
        help="split this fraction off train for validation (default: use DATA/val)",
    )
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
        type=_non_negative_int("--workers"),
        default=None,
        help="decoding worker processes",
    )
    t.add_argument("--opt", default=d.opt, choices=["adamw", "sgd", "rmsprop"])
    t.add_argument("--wd", type=float, default=d.wd, help="decoupled weight decay")
    t.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    t.add_argument("--out", default=d.out, help=f"run folder (default {d.out})")

    pr = sub.add_parser("predict", help="classify images with a saved model")
    pr.add_argument("model", help="folder written by `snugfit train` (OUT/model)")
    pr.add_argument("images", nargs="+", help="image files")

    dm = sub.add_parser("demo", help="offline demo: digits, EfficientNet-Lite0, fine_tune")
    dm.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    return p


def main(argv=None) -> int:
    logging.basicConfig(format="snugfit: %(message)s", level=logging.INFO)
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            from .run import train

            cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k != "command"})
            train(cfg)
        elif args.command == "predict":
            return _predict(args)
        elif args.command == "demo":
            from .demo import run_demo

            run_demo(Path(args.out))
    except SnugfitError as e:
        print(f"snugfit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("snugfit: interrupted", file=sys.stderr)
        return 130
    return 0


def _predict(args) -> int:
    from .errors import UnreadableImage
    from .learner import load_learner

    learn = load_learner(args.model)
    failed = 0
    for path in args.images:
        try:
            label, probs = learn.predict(path)
        except UnreadableImage as e:
            print(f"snugfit: skipping {e}", file=sys.stderr)
            failed += 1
            continue
        print(f"{path}\t{label}\t{probs.max().item():.4f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
