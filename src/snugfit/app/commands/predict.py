"""``snugfit predict``: predict images with a saved model, printed, into a CSV file, or
(segmentation) as a mask file per image."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from snugfit.app.arguments import budget, non_negative_int, positive_int

NAME = "predict"


def add_parser(subparsers) -> None:
    pr = subparsers.add_parser(
        NAME,
        help="predict images with a saved model (classes, or masks)",
        description="Print path, label and probability per image (in batches); or, with "
        "--csv, predict "
        "every image of folders (recursively) in batches that fit the device memory and "
        "write path, label, probability, one prob_<class> column per class and error. "
        "A segmentation model predicts each image at its own size (a sliding window of "
        "training-crop tiles): --out DIR writes DIR/<stem>.png (a class index per pixel; "
        "0/255 for a model trained on binary 0/255 masks, colours for colour masks), "
        "--overlay a colour overlay too, --csv each image's pixel share per class, --rle "
        "the masks run-length encoded. "
        "Exit status 1 when some file could not be read.",
    )
    pr.add_argument(
        "model", help="the model folder (OUT/model) or the run folder OUT of `snugfit train`"
    )
    pr.add_argument("images", nargs="+", help="image files or folders")
    pr.add_argument("--csv", default=None, help="write the predictions to this CSV file")
    pr.add_argument(
        "--out", default=None, metavar="DIR", help="segmentation: write a mask per image here"
    )
    pr.add_argument(
        "--overlay", action="store_true", help="segmentation: also DIR/<stem>_overlay.png"
    )
    pr.add_argument(
        "--rle",
        default=None,
        metavar="FILE",
        help="segmentation: write the masks run-length encoded, as Kaggle takes them: "
        "ImageId,ClassId,EncodedPixels, a row per image and class (background left out), "
        "pixels numbered down the columns",
    )
    pr.add_argument(
        "--rle-rows",
        action="store_true",
        help="with --rle: number the pixels along the rows (Carvana's order)",
    )
    pr.add_argument(
        "--flip",
        action="store_true",
        help="segmentation: also predict each tile mirrored and average (test-time augmentation)",
    )
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
    from snugfit.saving.disk import check_writable
    from snugfit.train.factory import load_learner

    if args.out is not None:  # before the model loads and the images are read
        check_writable(args.out, "--out")
    for flag, value in (("--csv", args.csv), ("--rle", args.rle)):
        if value is not None:
            check_writable(Path(value).parent, flag)
    learn = load_learner(args.model, resolve_device(args.device))
    wanted = (args.csv, args.out, args.rle)
    if any(v is not None for v in wanted) or args.overlay or args.flip or args.rle_rows:
        return _predict_outputs(learn, args)
    if learn.task.name != "segmentation":
        return _print_classes(learn, args)
    failed = 0
    for path in image_inputs(args.images):  # each mask at its image's own size
        try:
            label, probs = learn.predict(path)
        except UnreadableImage as e:
            print(f"snugfit: skipping {e}", file=sys.stderr)
            failed += 1
            continue
        print(learn.task.line(path, label, probs))
    return 1 if failed else 0


def _print_classes(learn, args: argparse.Namespace) -> int:
    """A line per image, in the order given, from batches decoded in worker processes
    (as ``--csv`` does). No progress bar: the lines are the progress, and a bar's
    redirect of stdout would send them to the terminal when stdout is piped."""
    import io

    from rich.console import Console

    from snugfit.infer.predict import image_inputs, predict_batch_size, predict_files

    files = image_inputs(args.images)
    bs = args.bs or predict_batch_size(learn, args.memory_budget)[0]
    failed, quiet = 0, Console(file=io.StringIO())
    lines = predict_files(learn, files, bs, num_workers=args.num_workers, console=quiet)
    for path, probs, reason in lines:
        if probs is None:
            print(f"snugfit: skipping {path}: {reason}", file=sys.stderr)
            failed += 1
            continue
        label = learn.task.labels(probs[None], learn.vocab)[0]
        print(learn.task.line(path, label, probs), flush=True)
    return 1 if failed else 0


def _predict_outputs(learn, args: argparse.Namespace) -> int:
    from snugfit.infer.predict import predict_outputs

    summary = predict_outputs(
        learn,
        args.images,
        csv_path=args.csv,
        out=args.out,
        overlay=args.overlay,
        flip=args.flip,
        bs=args.bs,
        memory_budget=args.memory_budget,
        num_workers=args.num_workers,
        rle=args.rle,
        rle_rows=args.rle_rows,
    )
    if getattr(summary, "bs_reason", None):
        print(summary.bs_reason, file=sys.stderr)
    for path, reason in summary.skipped:
        print(f"snugfit: skipping {path}: {reason}", file=sys.stderr)
    print(summary.line())
    return 1 if summary.skipped else 0
