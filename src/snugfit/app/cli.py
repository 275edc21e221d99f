"""The ``snugfit`` command line: train, check, plan, predict, export, lr-find, demo.

Bad input ends with one line, ``snugfit: error: <what is wrong>``, and exit
status 2; no traceback. Ctrl-C ends with status 130; during ``train`` it first
saves a checkpoint and prints the command that resumes the run.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from snugfit.app.config import TrainConfig
from snugfit.errors import SnugfitError


def _number(cast, ok, accepted: str):
    """An argparse type that says the accepted form on bad input (argparse names the
    argument: "argument --bs: must be a positive integer, got '0'")."""

    def parse(text):
        try:
            value = cast(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"must be {accepted}, got {text!r}")
        return value

    return parse


_positive_int = _number(int, lambda v: v >= 1, "a positive integer")
_non_negative_int = _number(int, lambda v: v >= 0, "an integer ≥ 0")
_positive_float = _number(float, lambda v: 0 < v < float("inf"), "a positive number")
_non_negative_float = _number(float, lambda v: 0 <= v < float("inf"), "a number ≥ 0")
_fraction = _number(float, lambda v: 0 < v < 1, "between 0 and 1")


def _column(text: str) -> int | str:
    """A CSV column: its index (0, 1, ...) or its name in the header row."""
    return int(text) if text.isdigit() else text


def _delimiter(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("must be a non-empty string, e.g. ' ' or ';'")
    return text


_DATA_HELP = (
    "folder: DATA/train/<class>/*, DATA/val/<class>/* (or DATA/<class>/*); "
    "with --csv, the folder the CSV's file names are relative to"
)


def _csv_args(p: argparse.ArgumentParser) -> None:
    """The options of a dataset listed in a CSV file (those of ImageDataLoaders.from_csv)."""
    g = p.add_argument_group(
        "data from a CSV file",
        "one row per image: a file name (relative to DATA, or to --folder) and its label(s)",
    )
    g.add_argument(
        "--csv",
        default=None,
        metavar="FILE",
        help="read the images and labels from this CSV file (relative to DATA, or absolute; "
        "the first row names the columns) instead of class folders",
    )
    g.add_argument("--folder", default=None, help="the images' folder, relative to DATA")
    g.add_argument(
        "--fn-col",
        type=_column,
        default=0,
        help="column of file names: header name or index (default 0)",
    )
    g.add_argument(
        "--label-col",
        type=_column,
        default=1,
        help="column of labels: header name or index (default 1)",
    )
    g.add_argument(
        "--label-delim",
        type=_delimiter,
        default=None,
        help="multi-label: the labels of a cell are separated by this (' ' splits on any "
        "whitespace); sigmoid outputs, BCE loss, accuracy_multi and f1_samples",
    )
    g.add_argument(
        "--valid-col",
        type=_column,
        default=None,
        help="column of booleans (1/0, true/false, yes/no) marking validation rows "
        "(instead of a random --valid-pct split, 0.2 by default)",
    )


def _memory_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="auto: bf16 on recent GPUs and CPUs with bf16, fp16 on older GPUs",
    )
    p.add_argument(
        "--memory-budget",
        "--gpu-mem",
        dest="memory_budget",
        default=None,
        required=required,
        type=_budget,
        help="device memory to fit in: 8GB, 8GiB, 7500MB, or 0.5 of the card",
    )


def _budget(text: str) -> str:
    from snugfit.memory import parse_bytes

    try:
        parse_bytes(text, total=1, name="")
    except SnugfitError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix(": ")) from None
    return text


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (argparse prints the whole usage first)."""

    def error(self, message: str):
        self.exit(2, f"snugfit: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="snugfit",
        description="Fine-tune pretrained image classifiers that fit your machine.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    d = TrainConfig("")

    t = sub.add_parser(
        "train", help="fine-tune a classifier on a folder of images (or a CSV of labels)"
    )
    t.add_argument("data", help=_DATA_HELP)
    t.add_argument("--arch", default=d.arch, help=f"timm model name (default {d.arch})")
    t.add_argument(
        "--epochs",
        type=_non_negative_int,
        default=d.epochs,
        help="epochs with the whole network unfrozen",
    )
    t.add_argument(
        "--freeze-epochs",
        type=_non_negative_int,
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
        "--head-epochs",
        type=_non_negative_int,
        default=d.head_epochs,
        help="auto: head epochs on precomputed features",
    )
    t.add_argument(
        "--no-precompute",
        dest="precompute",
        action="store_false",
        help="auto: train the head on images, not on precomputed features",
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
        "--sizes",
        type=_positive_int,
        nargs="+",
        default=None,
        help="auto: progressive resizing of the unfrozen phase, e.g. 128 176 224",
    )
    t.add_argument(
        "--resume", default=None, help="continue a run exactly from its OUT/checkpoint.safetensors"
    )
    t.add_argument(
        "--checkpoint-every",
        type=_positive_int,
        default=None,
        metavar="N",
        help="also write the checkpoint every N batches (default: after each epoch)",
    )
    t.add_argument("--bs", type=_positive_int, default=d.bs, help="batch size")
    t.add_argument("--size", type=_positive_int, default=d.size, help="image size (px)")
    t.add_argument("--lr", type=_positive_float, default=d.lr, help="fine_tune: base learning rate")
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
        help="split this fraction off train for validation (default: use DATA/val; 0.2 with --csv)",
    )
    _csv_args(t)
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
        type=_non_negative_int,
        default=None,
        help="decoding worker processes",
    )
    _memory_args(t)
    t.add_argument(
        "--micro-bs",
        type=_positive_int,
        default=None,
        help="micro-batch size (--bs stays the effective batch)",
    )
    t.add_argument(
        "--accumulate",
        type=_positive_int,
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
    t.add_argument("--wd", type=_non_negative_float, default=d.wd, help="decoupled weight decay")
    t.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    t.add_argument("--out", default=d.out, help=f"run folder (default {d.out})")
    t.add_argument(
        "--tensorboard",
        action="store_true",
        help="also log each epoch's losses, metrics and learning rates to OUT/tensorboard "
        "(needs: pip install 'snugfit[tensorboard]')",
    )

    pl = sub.add_parser(
        "plan",
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
        type=_positive_int,
        default=2,
        help="number of classes when no DATA is given (default 2)",
    )
    pl.add_argument("--arch", default=d.arch, help=f"timm model name (default {d.arch})")
    pl.add_argument("--size", type=_positive_int, default=d.size)
    pl.add_argument("--bs", type=_positive_int, default=d.bs, help="effective batch size")
    pl.add_argument("--opt", default=d.opt, choices=["adamw", "sgd", "rmsprop"])
    pl.add_argument(
        "--device-type",
        default="cuda",
        choices=["cuda", "cpu"],
        help="the device the budget is for (default cuda)",
    )
    _memory_args(pl, required=True)

    ck = sub.add_parser(
        "check",
        help="check an image folder or CSV dataset: counts, unreadable files, duplicates, "
        "imbalance",
        description="Decode every image of DATA (as train would split it) and report usable "
        "images per class (multi-label: per label) and split, unreadable files with the "
        "reason, CSV rows naming missing files, identical files (train/valid leaks, two "
        "labels, repeats), class imbalance, tiny images and empty class folders. Exit status "
        "0 when training can use the data.",
    )
    ck.add_argument("data", help=_DATA_HELP)
    ck.add_argument(
        "--valid-pct",
        type=_fraction,
        default=None,
        help="split this fraction off train for validation (default: use DATA/val; 0.2 with --csv)",
    )
    _csv_args(ck)
    ck.add_argument("--seed", type=int, default=d.seed, help="seed of the random split")
    ck.add_argument("--json", default=None, help="also write the report as JSON to this file")

    pr = sub.add_parser(
        "predict",
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
        type=_positive_int,
        default=None,
        help="batch size (default: the largest that fits --memory-budget on CUDA, 32 on CPU)",
    )
    pr.add_argument(
        "--memory-budget",
        dest="memory_budget",
        type=_budget,
        default=None,
        help="device memory the batches must fit: 2GB, 2GiB, or 0.5 of the card",
    )
    pr.add_argument("--workers", dest="num_workers", type=_non_negative_int, default=None)
    pr.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")

    ex = sub.add_parser(
        "export",
        help="export a saved model to ONNX, checked against PyTorch",
        description="Write MODEL as ONNX (eval mode, float32; input: normalised images as "
        "snugfit.json describes, output: logits; class names, size, mean and std in the "
        "file's metadata), then compare onnxruntime's logits with PyTorch's on a random "
        "batch (within 1e-4) when onnxruntime is installed.",
    )
    ex.add_argument("model", help="folder written by `snugfit train` (OUT/model)")
    ex.add_argument("--onnx", action="store_true", required=True, help="export to ONNX")
    ex.add_argument("--out", default=None, help="the .onnx file (default MODEL/model.onnx)")
    ex.add_argument("--opset", type=_positive_int, default=None, help="ONNX opset")
    ex.add_argument(
        "--dynamic-batch", action="store_true", help="any batch size (default: fixed at 1)"
    )

    lf = sub.add_parser(
        "lr-find",
        help="learning-rate finder: sweep, suggestions, plot",
        description="fastai's lr_find on the model as training would start it (head only, "
        "or --unfrozen); prints the suggestions and saves the plot.",
    )
    lf.add_argument("data", help="image folder (as for train)")
    lf.add_argument("--arch", default=d.arch, help=f"timm model name (default {d.arch})")
    lf.add_argument("--weights", default=None, help="local weights file")
    lf.add_argument(
        "--no-pretrained", dest="pretrained", action="store_false", help="start from random weights"
    )
    lf.add_argument("--bs", type=_positive_int, default=d.bs)
    lf.add_argument("--size", type=_positive_int, default=d.size)
    lf.add_argument("--unfrozen", action="store_true", help="sweep with every layer training")
    lf.add_argument("--num-it", type=_positive_int, default=100)
    lf.add_argument("--workers", dest="num_workers", type=_non_negative_int, default=None)
    lf.add_argument("--plot", default="lr_find.png", help="PNG to write (default lr_find.png)")
    _memory_args(lf)

    dm = sub.add_parser("demo", help="offline demo: digits, EfficientNet-Lite0, auto_fit")
    dm.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    return p


def main(argv=None) -> int:
    logging.basicConfig(format="snugfit: %(message)s", level=logging.INFO)
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            return _train(args, sys.argv[1:] if argv is None else list(argv))
        elif args.command == "predict":
            return _predict(args)
        elif args.command == "export":
            _export(args)
        elif args.command == "check":
            _check(args)
        elif args.command == "plan":
            _plan(args)
        elif args.command == "lr-find":
            _lr_find(args)
        elif args.command == "demo":
            from snugfit.app.demo import run_demo

            run_demo(Path(args.out))
    except SnugfitError as e:
        print(f"snugfit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("snugfit: interrupted", file=sys.stderr)
        return 130
    return 0


def _train(args, argv: list[str]) -> int:
    from snugfit.app.run import CHECKPOINT, train

    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k != "command"})
    ckpt = Path(cfg.out) / CHECKPOINT
    before = _mtime(ckpt)
    try:
        train(cfg)
    except KeyboardInterrupt:
        # Only a checkpoint this run wrote (or the one it resumed from) continues it.
        fresh = ckpt.is_file() and _mtime(ckpt) != before
        resume = str(ckpt) if fresh else cfg.resume
        print("snugfit: interrupted", file=sys.stderr)
        if resume is not None:
            command = shlex.join(["snugfit", *_without_resume(argv), "--resume", resume])
            print(f"snugfit: resume with: {command}", file=sys.stderr)
        return 130
    return 0


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


def _check(args) -> None:
    from rich.console import Console

    from snugfit.app.dataset import check_data

    keys = ("valid_pct", "seed", "csv", "folder", "fn_col", "label_col", "label_delim", "valid_col")
    report = check_data(TrainConfig(args.data, **{k: getattr(args, k) for k in keys}))
    report.print(Console())
    if args.json is not None:
        try:
            print(f"report: {report.to_json(args.json)}")
        except OSError as e:
            raise SnugfitError(f"{args.json}: cannot write the report ({e.strerror})") from None


def _plan(args) -> None:
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


def _lr_find(args) -> None:
    from snugfit.data.loaders import ImageDataLoaders
    from snugfit.train.learner import vision_learner

    dls = ImageDataLoaders.from_folder(
        args.data, bs=args.bs, size=args.size, num_workers=args.num_workers
    )
    learn = vision_learner(
        dls,
        args.arch,
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


def _predict(args) -> int:
    from snugfit.data.loaders import resolve_device
    from snugfit.errors import UnreadableImage
    from snugfit.infer.predict import image_inputs
    from snugfit.train.learner import load_learner

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
        if learn.multi_label:  # the labels above the threshold and their probabilities
            chosen = probs[probs > learn.threshold].tolist()
            print(f"{path}\t{' '.join(label)}\t{' '.join(f'{p:.4f}' for p in chosen)}")
        else:
            print(f"{path}\t{label}\t{probs.max().item():.4f}")
    return 1 if failed else 0


def _predict_csv(learn, args) -> int:
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


def _export(args) -> None:
    from snugfit.saving.model_files import export_onnx

    result = export_onnx(args.model, args.out, opset=args.opset, dynamic_batch=args.dynamic_batch)
    batch = "dynamic batch" if result.dynamic_batch else "batch 1"
    exporter = "dynamo" if result.exporter == "dynamo" else "TorchScript, dynamo=False"
    print(f"wrote {result.path} (opset {result.opset}, {batch}, {exporter} exporter)")
    print(result.check)


if __name__ == "__main__":
    sys.exit(main())
