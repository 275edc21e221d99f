"""Run-length masks in a CSV (Understanding Clouds' layout, 1400x2100 scenes, four
classes per image): how long the first read takes to decode them into mask files,
in this process (the baseline) and in worker processes, then the data check on
them, and a second read (decoded already, from the cache).

Scenes are generated: a JPEG of noise per image, and per class an ellipse with a
chance of 0.7, encoded as Kaggle encodes (down the columns).

    PYTHONPATH=src .venv/bin/python bench/rle.py [--images 40] [--size 1400x2100]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

from snugfit.data import rle
from snugfit.data.check_seg import check_segmentation
from snugfit.data.seg_layouts import folders_of

CLASSES = ("Fish", "Flower", "Gravel", "Sugar")


def scenes(root: Path, n: int, h: int, w: int) -> None:
    rng = np.random.default_rng(0)
    (root / "train_images").mkdir(parents=True)
    yy, xx = np.mgrid[:h, :w]
    lines = ["Image_Label,EncodedPixels"]
    for i in range(n):
        name = f"{i:07d}.jpg"
        noise = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)
        Image.fromarray(noise).resize((w, h)).save(root / "train_images" / name, quality=90)
        for label in CLASSES:
            cell = ""
            if rng.random() < 0.7:
                cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
                ry, rx = rng.uniform(0.1, 0.3) * h, rng.uniform(0.1, 0.3) * w
                cell = rle.encode(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1)
            lines.append(f"{name}_{label},{cell}")
    (root / "train.csv").write_text("\n".join(lines) + "\n")


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=80)
    ap.add_argument("--size", default="1400x2100")
    args = ap.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "clouds"
        scenes(root, args.images, h, w)
        rows = []
        for label, workers in (
            ("decode, this process (baseline)", 1),
            ("decode, worker processes", rle.WORKERS),
        ):
            os.environ["SNUGFIT_CACHE"] = str(Path(tmp) / f"cache{workers}")
            rle.WORKERS = workers
            rows.append((label, timed(lambda: folders_of(root))))
        rows.append(("second read (cached)", timed(lambda: folders_of(root))))
        rows.append(("data check on the masks", timed(lambda: check_segmentation(root))))
    table = Table(title=f"{args.images} scenes at {h}x{w}, 4 classes, {os.cpu_count()} CPUs")
    for col in ("step", "seconds", "per image ms", "vs baseline"):
        table.add_column(col)
    for step, s in rows:
        table.add_row(step, f"{s:.2f}", f"{1000 * s / args.images:.1f}", f"{s / rows[0][1]:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
