"""GPU throughput: snugfit's loop vs a hand-written loop, with and without compile.

resnet50 @ 224 and efficientnet_b0 @ 224, bf16 autocast + channels_last, AdamW,
synthetic batches already on the GPU (the loop is measured, not the data).
Prints images/s, the ratio snugfit / hand-written (goal >= 0.98), the gain of
``compile=True``, and the peak memory of each run.

    PYTHONPATH=src python bench/gpu.py [--bs 128 --steps 30]
"""

from __future__ import annotations

import argparse
import copy
import io

import timm
import torch
from rich.console import Console
from rich.table import Table

from _common import hand_written_epoch, peak_bytes, reset_peak, synthetic_dls, timed
from snugfit import Learner


def run_hand(base, dls, compile_model: bool, device, precision="bf16") -> tuple[float, int]:
    """Images/s and peak memory of the hand-written loop, after a warm-up epoch."""
    model = copy.deepcopy(base)
    if compile_model:
        model.compile()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    batches = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in dls.train]
    hand_written_epoch(model, opt, batches, precision, device)  # warm-up (and compile)
    reset_peak(device)
    t = timed(lambda: hand_written_epoch(model, opt, batches, precision, device), device)
    return len(batches) * dls.bs / t, peak_bytes(device)


def run_snugfit(base, dls, compile_model: bool, device, precision="bf16") -> tuple[float, int]:
    """Images/s and peak memory of `Learner.fit` at a fixed micro-batch, after a warm-up."""
    learn = Learner(
        dls,
        copy.deepcopy(base),
        precision=precision,
        bn_freeze_below=0,
        compile=compile_model,
        console=Console(file=io.StringIO()),
    )
    learn.unfreeze()
    learn.replan_if_needed = lambda: None  # fixed micro-batch = bs, as the hand-written loop
    learn.evaluate = lambda dl: (0.0, {})
    learn.fit(1)  # warm-up (and compile)
    reset_peak(device)
    t = timed(lambda: learn.fit(1), device)
    return len(dls.train) * dls.bs / t, peak_bytes(device)


def run(arch: str, bs: int, steps: int, compile_model: bool, device) -> list[tuple]:
    dls = synthetic_dls(steps, bs, 224, 1000, device)
    torch.manual_seed(0)
    base = timm.create_model(arch).to(device, memory_format=torch.channels_last)
    # one after the other, each freeing its model and optimizer before the next
    return [
        ("hand-written", compile_model, *run_hand(base, dls, compile_model, device)),
        ("snugfit", compile_model, *run_snugfit(base, dls, compile_model, device)),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bs", type=int, default=128)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--archs", nargs="+", default=["resnet50", "efficientnet_b0"])
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py needs a CUDA device")
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    console = Console()
    name = torch.cuda.get_device_name(device)
    for arch in args.archs:
        rows = run(arch, args.bs, args.steps, False, device)
        rows += run(arch, args.bs, args.steps, True, device)
        table = Table(title=f"{arch} @ 224, bs {args.bs}, bf16 + channels_last, AdamW, {name}")
        for col in ("loop", "compile", "images/s", "vs hand-written", "peak memory"):
            table.add_column(col)
        hand = {c: r for loop, c, r, _ in rows if loop == "hand-written"}
        for loop, c, rate, peak in rows:
            table.add_row(
                loop, str(c), f"{rate:.0f}", f"{rate / hand[c]:.3f}", f"{peak / 2**30:.2f} GiB"
            )
        console.print(table)
        snug = {c: r for loop, c, r, _ in rows if loop == "snugfit"}
        console.print(f"compile=True gain for snugfit: {snug[True] / snug[False]:.2f}x")


if __name__ == "__main__":
    main()
