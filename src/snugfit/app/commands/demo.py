"""``snugfit demo``: the offline demo (digits, EfficientNet-Lite0, auto_fit); see `snugfit.app.demo`."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "demo"


def add_parser(subparsers) -> None:
    dm = subparsers.add_parser(NAME, help="offline demo: digits, EfficientNet-Lite0, auto_fit")
    dm.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")


def run(args: argparse.Namespace) -> None:
    from snugfit.app.demo import run_demo

    run_demo(Path(args.out))
