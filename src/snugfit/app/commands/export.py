"""``snugfit export``: a saved model as ONNX, checked against PyTorch."""

from __future__ import annotations

import argparse
from pathlib import Path

from snugfit.app.arguments import positive_int

NAME = "export"


def add_parser(subparsers) -> None:
    ex = subparsers.add_parser(
        NAME,
        help="export a saved model to ONNX, checked against PyTorch",
        description="Write MODEL as ONNX (eval mode, float32; input: normalised images as "
        "snugfit.json describes, output: logits; class names, size, mean and std in the "
        "file's metadata), then compare onnxruntime's logits with PyTorch's on a random "
        "batch (within 1e-4) when onnxruntime is installed.",
    )
    ex.add_argument(
        "model", help="the model folder (OUT/model) or the run folder OUT of `snugfit train`"
    )
    ex.add_argument("--onnx", action="store_true", required=True, help="export to ONNX")
    ex.add_argument("--out", default=None, help="the .onnx file (default MODEL/model.onnx)")
    ex.add_argument("--opset", type=positive_int, default=None, help="ONNX opset")
    ex.add_argument(
        "--dynamic-batch", action="store_true", help="any batch size (default: fixed at 1)"
    )


def run(args: argparse.Namespace) -> None:
    from snugfit.saving.disk import check_writable
    from snugfit.saving.onnx import export_onnx

    # Before the model loads and the export runs (a missing model is said by the export).
    if args.out is not None:
        check_writable(Path(args.out).parent, "--out")
    elif Path(args.model).is_dir():
        check_writable(args.model, "--out (default: MODEL/model.onnx)")
    result = export_onnx(args.model, args.out, opset=args.opset, dynamic_batch=args.dynamic_batch)
    batch = "dynamic batch" if result.dynamic_batch else "batch 1"
    exporter = "dynamo" if result.exporter == "dynamo" else "TorchScript, dynamo=False"
    print(f"wrote {result.path} (opset {result.opset}, {batch}, {exporter} exporter)")
    print(result.check)
