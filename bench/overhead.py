"""snugfit's training step vs a hand-written PyTorch loop, on the CPU.

Identical model (same weights, channels_last), batches (already in memory, so
only the loop is measured), precision and optimizer (AdamW). The two loops
alternate over several rounds; the table gives the median steps/s of each and
the ratio (goal: snugfit >= 0.97x the hand-written loop).

    PYTHONPATH=src .venv/bin/python bench/overhead.py [--arch resnet18 --size 96 --bs 32]
"""

from __future__ import annotations

import argparse
import copy
import io
import statistics

import timm
import torch
from rich.console import Console
from rich.table import Table

from _common import hand_written_epoch, synthetic_dls, timed
from snugfit import Learner


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--bs", type=int, default=32)
    p.add_argument("--steps", type=int, default=8, help="optimizer steps per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    args = p.parse_args()
    device = torch.device("cpu")
    dls = synthetic_dls(args.steps, args.bs, args.size, 10, device)

    torch.manual_seed(0)
    base = timm.create_model(args.arch, num_classes=10).to(memory_format=torch.channels_last)
    hand_model = copy.deepcopy(base)
    hand_opt = torch.optim.AdamW(hand_model.parameters(), lr=1e-4, betas=(0.9, 0.99), eps=1e-5)
    hand_batches = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in dls.train]

    quiet = Console(file=io.StringIO())
    learn = Learner(
        dls,
        copy.deepcopy(base),
        precision=args.precision,
        bn_freeze_below=0,  # train BN as the hand-written loop does
        console=quiet,
    )
    learn.unfreeze()
    # Validation is not part of a training step: skip it in the timed fit.
    learn.evaluate = lambda dl: (0.0, {})

    def snug():
        learn.fit(1, lr=1e-4)

    def hand():
        hand_written_epoch(hand_model, hand_opt, hand_batches, args.precision, device)

    snug(), hand()  # warm-up: allocator, oneDNN primitives
    times = {"hand-written loop": [], "snugfit Learner.fit": []}
    for _ in range(args.rounds):
        times["hand-written loop"].append(timed(hand, device))
        times["snugfit Learner.fit"].append(timed(snug, device))

    table = Table(
        title=f"{args.arch} @ {args.size}px, bs {args.bs}, {args.precision}, AdamW, "
        f"{torch.get_num_threads()} threads, median of {args.rounds} rounds of {args.steps} steps"
    )
    for col in ("loop", "steps/s", "ratio"):
        table.add_column(col)
    base_rate = args.steps / statistics.median(times["hand-written loop"])
    for name, ts in times.items():
        rate = args.steps / statistics.median(ts)
        table.add_row(name, f"{rate:.2f}", f"{rate / base_rate:.3f}")
    Console().print(table)


if __name__ == "__main__":
    main()
