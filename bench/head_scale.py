"""Why auto_fit's head phases see larger images: a linear head on frozen features,
images at 1x (the baseline) and larger multiples of the training size.

For each data set of bench/recipe.py (hymenoptera with neutral class names at 224
px, digits and textures at 64 px) the packaged ImageNet Lite0 body computes the
pooled features of the training and validation images once per scale (validation
transform: resize, central crop), then a linear head trains on them (AdamW,
one-cycle, 4 epochs, lr 1.6e-2, bs 32: auto_fit's head phase with a typical
lr_find choice) from several seeds. Printed: mean validation loss and error per
scale, and the loss ratio against 1x.

    PYTHONPATH=src .venv/bin/python bench/head_scale.py [--seeds 0 1 2 3 4] [--scales 1 1.5]
    (textures need scikit-image: bench/.venv-fastai/bin/python, see make bench-recipe)
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from _recipe_data import DATASETS, HYMENOPTERA, Missing, build
from snugfit import ImageDataLoaders, vision_learner
from snugfit.models import packaged_lite0_weights
from snugfit.sizes import scale_size

SCALES = (1.0, 1.15, 1.3, 1.5, 1.7)


@torch.no_grad()
def features(data: Path, size: int, flip: bool) -> tuple:
    """Pooled features and labels of the train and validation images, no augmentation."""
    dls = ImageDataLoaders.from_folder(data, bs=32, size=size, flip=flip, seed=0)
    learn = vision_learner(dls, "tf_efficientnet_lite0", weights=packaged_lite0_weights(),
                           console=Console(file=io.StringIO()))  # fmt: skip
    model = learn.model.eval()
    valid_like = learn.dls.with_preprocessing(learn.preprocessing)
    out = []
    for items in (learn.dls.train_items, learn.dls.valid_items):
        loader = (
            valid_like.valid if items is learn.dls.valid_items else _as_valid(valid_like, items)
        )
        xs, ys = [], []
        for x, y in loader:
            xs.append(model.forward_head(model.forward_features(x), pre_logits=True))
            ys.append(y)
        out.append((torch.cat(xs), torch.cat(ys)))
    return out


def _as_valid(dls, items):
    """A loader of ``items`` with the validation transform."""
    from snugfit.data.device_loader import DeviceLoader

    v = dls.valid
    return DeviceLoader(items, False, dls.settings, task=v.task, n_classes=v.n_classes,
                        skips=v.skips, cache=v.cache)  # fmt: skip


def head(train, valid, seed: int, lr=1.6e-2, epochs=4, bs=32) -> tuple[float, float]:
    (xt, yt), (xv, yv) = train, valid
    torch.manual_seed(seed)
    lin = torch.nn.Linear(xt.shape[1], int(max(yt.max(), yv.max())) + 1)
    opt = torch.optim.AdamW(lin.parameters(), lr=lr, weight_decay=1e-2)
    steps = epochs * -(-len(xt) // bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.25)
    for _ in range(epochs):
        order = torch.randperm(len(xt))
        for i in range(0, len(xt), bs):
            idx = order[i : i + bs]
            loss = F.cross_entropy(lin(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        out = lin(xv)
    return F.cross_entropy(out, yv).item(), (out.argmax(1) != yv).float().mean().item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--datasets", nargs="+", default=["hym-neutral", "digits", "textures"])
    p.add_argument("--scales", type=float, nargs="+", default=SCALES, help="1 first")
    args = p.parse_args()
    console = Console()
    table = Table(title=f"linear head on frozen Lite0 features, seeds {args.seeds}")
    for col in ("data set", "scale", "size", "valid loss", "error", "loss vs 1x"):
        table.add_column(col)
    with tempfile.TemporaryDirectory() as tmp:
        for ds in (d for d in DATASETS if d.key in args.datasets):
            try:
                data = build(ds.key, Path(tmp) / "data", HYMENOPTERA)
            except Missing as e:
                console.print(f"skipped {ds.key}: {e}")
                continue
            base = None
            for scale in args.scales:
                size = scale_size(ds.size, scale, 8)
                train, valid = features(data, size, ds.flip)
                runs = [head(train, valid, s) for s in args.seeds]
                loss = statistics.mean(r[0] for r in runs)
                err = statistics.mean(r[1] for r in runs)
                base = base or loss
                table.add_row(ds.title, f"{scale:g}x", str(size), f"{loss:.3f}", f"{err:.1%}",
                              f"{loss / base:.2f}")  # fmt: skip
            table.add_section()
    console.print(table)


if __name__ == "__main__":
    main()
