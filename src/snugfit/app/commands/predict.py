"""``snugfit predict``: classify images with a saved model, printed or into a CSV file."""

from __future__ import annotations

import argparse
import sys

from snugfit.app.arguments import budget, non_negative_int, positive_int

NAME = "predict"


def add_parser(subparsers) -> None:
    pr = subparsers.add_parser(
        NAME,
        help="classify images with a saved model",
        description="Print path, label and probability per image; or, with --csv, predict "
        "every image of folders (recursively) in batches that fit the device memory and "
        "write path, label, probability, one prob_<class> column per class and error. "
        "Exit status 1 when some file could not be read.",
    )
    pr.add_argument("model", help="folder written by `snugfit train` (OUT/model)")
    pr.add_argument("images", nargs="+", help="image files or folders")
    pr.add_argument("--csv", default=None, help="write the predictions to this CSV file")
    pr.add_argument(
        "--bs",
        type=positive_int,
        default=None,
        help="batch size (default: the largest that fits --memory-budget on CUDA, 32 on CPU)",
    )
    pr.add_argument(
        "--memory-budget",
        dest="memory_budget",
        type=budget,
        default=None,
        help="device memory the batches must fit: 2GB, 2GiB, or 0.5 of the card",
    )
    pr.add_argument("--workers", dest="num_workers", type=non_negative_int, default=None)
    pr.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")


def run(args: argparse.Namespace) -> int:
    """Exit status 1 when some file could not be read."""
    from snugfit.data.loaders import resolve_device
    from snugfit.errors import UnreadableImage
    from snugfit.infer.predict import image_inputs
    from snugfit.train.factory import load_learner

    learn = load_learner(args.model, resolve_device(args.device))
    if args.csv is not None:
        return _predict_csv(learn, args)
    failed = 0
    for path in image_inputs(args.images):
        try:
            label, probs = learn.predict(path)
        except UnreadableImage as e:
            print(f"snugfit: skipping {e}", file=sys.stderr)
            failed += 1
            continue
        print(learn.task.line(path, label, probs))
    return 1 if failed else 0


def _predict_csv(learn, args: argparse.Namespace) -> int:
    from snugfit.infer.predict import predict_to_csv

    summary = predict_to_csv(
        learn,
        args.images,
        args.csv,
        bs=args.bs,
        memory_budget=args.memory_budget,
        num_workers=args.num_workers,
    )
    print(summary.bs_reason, file=sys.stderr)
    for path, reason in summary.skipped:
        print(f"snugfit: skipping {path}: {reason}", file=sys.stderr)
    print(summary.line())
    return 1 if summary.skipped else 0
