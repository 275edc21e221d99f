"""Where the unfrozen phase's time goes: one training step of Lite0 on hymenoptera,
split into loading + augmentation, forward, backward and optimizer step, and the
validation pass, per precision and image size.

Batches come from snugfit's loaders (pixel cache warm, augmentation on the CPU as in
training); the model is the packaged ImageNet Lite0, unfrozen, channels_last, in
train mode (BatchNorm updating). Each figure is the median over ``--steps`` steps
after one warm-up step. Printed: a table per size, and each part's share of a step.

    PYTHONPATH=src .venv/bin/python bench/step_time.py [--sizes 224 160] [--steps 5]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from _recipe_data import HYMENOPTERA
from snugfit import ImageDataLoaders, vision_learner
from snugfit.models import packaged_lite0_weights


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def step_parts(learn, batches, precision: str) -> dict[str, float]:
    model, opt = learn.model, torch.optim.AdamW(learn.model.parameters(), lr=1e-6)
    model.train()
    parts: dict[str, list[float]] = {"forward": [], "backward": [], "optimizer": []}
    for i, (x, y) in enumerate(batches):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss, t_fwd = timed(lambda xb, yb: F.cross_entropy(model(xb), yb), x, y)
        _, t_bwd = timed(loss.backward)
        _, t_opt = timed(lambda: (opt.step(), opt.zero_grad(set_to_none=True)))
        if i:  # the first step warms up
            for k, t in zip(parts, (t_fwd, t_bwd, t_opt), strict=True):
                parts[k].append(t)
    return {k: statistics.median(v) for k, v in parts.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[224, 160])
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    console = Console()
    torch.manual_seed(0)
    for size in args.sizes:
        dls = ImageDataLoaders.from_folder(HYMENOPTERA, bs=32, size=size, seed=0)
        learn = vision_learner(dls, "tf_efficientnet_lite0", weights=packaged_lite0_weights(),
                               console=Console(file=io.StringIO()))  # fmt: skip
        learn.unfreeze()
        learn.model.to(memory_format=torch.channels_last)
        list(learn.dls.train)  # fill the pixel cache
        batches, t_load = timed(list, learn.dls.train)
        n_batches = len(batches)
        batches = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in batches]
        learn.model.eval()
        with torch.no_grad():
            _, t_valid = timed(lambda m, dl: [m(x) for x, _ in dl], learn.model, learn.dls.valid)
        n_valid = len(learn.dls.valid_items)
        table = Table(title=f"Lite0 unfrozen, {size} px, bs 32, {torch.get_num_threads()} threads")
        for col in ("precision", "load + augment", "forward", "backward", "optimizer", "step",
                    "epoch (train)", "validation"):  # fmt: skip
            table.add_column(col)
        for precision in ("fp32", "bf16"):
            parts = step_parts(learn, batches[: args.steps + 1], precision)
            load = t_load / n_batches
            step = load + sum(parts.values())
            cells = [f"{load * 1e3:.0f} ms"] + [f"{v * 1e3:.0f} ms" for v in parts.values()]
            table.add_row(precision, *cells, f"{step:.2f} s", f"{step * n_batches:.1f} s",
                          f"{t_valid:.1f} s ({n_valid} images)")  # fmt: skip
            shares = ", ".join(f"{k} {v / step:.0%}" for k, v in [("load", load), *parts.items()])
            console.print(f"{size} px {precision}: {shares}", highlight=False)
        console.print(table)


if __name__ == "__main__":
    main()
