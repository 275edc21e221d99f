"""`snugfit predict --csv` on the CPU: the model as saved (the baseline) against its
inference copy with BatchNorm folded into the convolutions (what prediction runs
from `snugfit.infer.predict.FOLD_BATCHES` batches on).

EfficientNet-Lite0 with the packaged ImageNet weights and a new two-class head,
saved and loaded as `snugfit predict` loads it, predicts hymenoptera's 153
validation photos at 224 px in batches of 32 (decoding in worker processes
included, as a user sees it). The two are timed alternately, ``--repeats`` times
each, in this process; the probabilities are compared.

    PYTHONPATH=src .venv/bin/python bench/predict.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import csv
import io
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from snugfit import ImageDataLoaders, vision_learner
from snugfit.infer import predict
from snugfit.models import packaged_lite0_weights
from snugfit.train.factory import load_learner

HYMENOPTERA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "hymenoptera_data"


def run(learn, images: Path, out: Path, fold: bool) -> tuple[float, list[list[str]]]:
    predict.FOLD_BATCHES = 4 if fold else 10**9
    quiet = Console(file=io.StringIO())
    start = time.perf_counter()
    predict.predict_to_csv(learn, [images], out, bs=32, console=quiet)
    took = time.perf_counter() - start
    with out.open(newline="") as f:
        return took, list(csv.reader(f))[1:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=HYMENOPTERA)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if not (args.data / "val").is_dir():
        raise SystemExit(f"{args.data}: no such data (hymenoptera_data, with val/)")
    with tempfile.TemporaryDirectory() as tmp:
        dls = ImageDataLoaders.from_folder(args.data, bs=32, size=224)
        vision_learner(dls, "tf_efficientnet_lite0", weights=packaged_lite0_weights(),
                       console=Console(file=io.StringIO())).save(Path(tmp) / "model")  # fmt: skip
        learn = load_learner(Path(tmp) / "model", "cpu")
        times = {False: [], True: []}
        rows = {}
        run(learn, args.data / "val", Path(tmp) / "warm.csv", False)  # workers, caches
        for _ in range(args.repeats):
            for fold in (False, True):
                took, rows[fold] = run(learn, args.data / "val", Path(tmp) / "p.csv", fold)
                times[fold].append(took)
    worst = max(
        abs(float(a) - float(b))
        for ra, rb in zip(rows[False], rows[True], strict=True)
        for a, b in zip(ra[3:-1], rb[3:-1], strict=True)
    )
    table = Table(title=f"predict --csv, {len(rows[True])} images at 224 px, bs 32, CPU")
    for col in ("model", "seconds (mean)", "range", "vs baseline"):
        table.add_column(col)
    base = statistics.mean(times[False])
    for fold, name in ((False, "as saved (baseline)"), (True, "BatchNorm folded")):
        t = times[fold]
        table.add_row(name, f"{statistics.mean(t):.2f}", f"{min(t):.2f}-{max(t):.2f}",
                      f"{statistics.mean(t) / base:.2f}")  # fmt: skip
    Console().print(table)
    print(f"largest difference of a class probability: {worst:.2e}")


if __name__ == "__main__":
    main()
