"""Images/s of snugfit's loader, cold (decoding into an empty pixel cache) and warm.

Times one epoch over the training split of an image folder, as training sees it
(DeviceLoader on the CPU, augmentation on), against torchvision's ``ImageFolder``
with PIL transforms (RandomResizedCrop, RandomHorizontalFlip, ToTensor,
Normalize) and the same workers, batch size and size. The cache lives in a fresh
temporary folder, so the first pass is truly cold.

Rows:

* cold: first epoch with an empty cache (pre-pass decoding in the workers, then
  the epoch from the cache);
* warm: a later epoch of the same loaders (pixels read in the main process);
* next run: a new ``ImageDataLoaders`` over the same cache (no decoding at all);
* warm, no augmentation: the loader alone, without the CPU augmentation cost;
* warm, host side of a GPU run: only what the host does when the device is a
  GPU (read cached uint8 pixels into batches); resampling, lighting and
  normalisation then run on the GPU;
* no cache: snugfit decoding every epoch (second epoch, workers already up).

    PYTHONPATH=src .venv/bin/python bench/data.py [--data ../shared/data/hymenoptera_data]
        [--size 224] [--workers 2] [--bs 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from snugfit.data.loaders import ImageDataLoaders

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared/data/hymenoptera_data"


def epoch_rate(loader) -> tuple[float, int]:
    """Images/s of one pass over ``loader`` (batches of ``(x, y)``), and the image count."""
    start = time.perf_counter()
    n = sum(len(y) for _, y in loader)
    return n / (time.perf_counter() - start), n


def host_rate(loader) -> float:
    """Images/s of the host's share of a warm epoch: uint8 batches read from the cache.

    Uses the loader's internals on purpose: on a GPU the rest of `DeviceLoader`'s
    work (augmentation, normalisation) runs on the card, so this is the rate the
    host can feed it at.
    """
    dl = loader.dataloader()
    keys = loader._cached_keys(dl.dataset, prepass=False)
    assert keys is not None, "the cache should hold every image after a warm epoch"
    start = time.perf_counter()
    n = sum(len(y) for _, y, _ in loader._read_cached(dl, keys))
    return n / (time.perf_counter() - start)


def baseline_rate(train_dir: Path, size: int, workers: int, bs: int) -> float:
    tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    ds = datasets.ImageFolder(str(train_dir), transform=tf)
    dl = DataLoader(ds, batch_size=bs, shuffle=True, num_workers=workers)
    return epoch_rate(dl)[0]


BASELINE = ("torchvision ImageFolder + PIL", "one epoch")


def one_round(args: argparse.Namespace, settings: dict, console: Console) -> dict:
    """Images/s of every row, measured once."""
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:  # a cold cache each round
        dls = ImageDataLoaders.from_folder(args.data, cache_root=tmp, console=console, **settings)
        rates["snugfit", "cold (empty cache)"] = epoch_rate(dls.train)[0]
        rates["snugfit", "warm epoch"] = epoch_rate(dls.train)[0]
        again = ImageDataLoaders.from_folder(args.data, cache_root=tmp, **settings)
        rates["snugfit", "next run, first epoch"] = epoch_rate(again.train)[0]
        again.augment = False
        rates["snugfit", "warm, no augmentation"] = epoch_rate(again.train)[0]
        rates["snugfit", "warm, host side of a GPU run"] = host_rate(again.train)
    plain = ImageDataLoaders.from_folder(args.data, cache=False, **settings)
    epoch_rate(plain.train)  # start the persistent workers
    rates["snugfit", "no cache (2nd epoch)"] = epoch_rate(plain.train)[0]
    plain.close()
    rates[BASELINE] = baseline_rate(dls.path / "train", args.size, args.workers, args.bs)
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--bs", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    console = Console()
    torch.set_num_threads(args.workers or 1)  # the machine's cores, shared with the workers

    settings = dict(size=args.size, num_workers=args.workers, bs=args.bs, device="cpu")
    # This machine's speed drifts (shared cores): run every row in each of a few
    # interleaved rounds and keep each row's best, so ratios compare like with like.
    best: dict[tuple[str, str], float] = {}
    for _ in range(args.rounds):
        for row, rate in one_round(args, settings, console).items():
            best[row] = max(best.get(row, 0.0), rate)
    base = best[BASELINE]
    n_train = len(ImageDataLoaders.from_folder(args.data, cache=False, **settings).train_items)
    table = Table(
        title=f"{args.data.name}: {n_train} train images, {args.size} px, bs {args.bs}, "
        f"{args.workers} workers, CPU, best of {args.rounds} rounds"
    )
    for col in ("loader", "pass", "images/s", "vs baseline"):
        table.add_column(col, justify="right" if col in ("images/s", "vs baseline") else "left")
    for (loader, what), rate in best.items():
        table.add_row(loader, what, f"{rate:,.0f}", f"{rate / base:.1f}x")
    console.print(table)


if __name__ == "__main__":
    main()
