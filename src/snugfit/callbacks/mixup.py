"""MixUp (Zhang et al. 2018; fastai's ``MixUp(alpha=0.4)``, timm's ``--mixup``): each
training batch is blended with a random permutation of itself, images and targets
alike, with one weight ``lam ~ Beta(alpha, alpha)`` per batch (timm's default mode;
fastai draws one per sample).

The math is `mixup_batch`, with a given ``lam`` and permutation; the callback draws
them (`draw_lam`, `draw_perm`) and turns the targets into soft targets first
(`soft_targets`). `snugfit.callbacks.CutMix` shares these pieces.

>>> x = torch.tensor([[[[0.0]]], [[[1.0]]]])  # two 1x1 images
>>> y = soft_targets(torch.tensor([0, 1]), 2, multi_label=False)
>>> xm, ym = mixup_batch(x, y, 0.75, torch.tensor([1, 0]))
>>> xm.flatten().tolist(), ym.tolist()
([0.25, 0.75], [[0.75, 0.25], [0.25, 0.75]])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from snugfit.callbacks import Callback
from snugfit.errors import SnugfitError, check_positive


def soft_targets(yb: Tensor, n_classes: int, multi_label: bool) -> Tensor:
    """``(N, C)`` float targets: one-hot rows of class indices (single-label), or the
    multi-hot (or already mixed) rows themselves (multi-label, or a batch mixed before)."""
    if multi_label or yb.ndim == 2:
        return yb.float()
    return F.one_hot(yb.long(), n_classes).float()


def mixup_batch(x: Tensor, y: Tensor, lam: float, perm: Tensor) -> tuple[Tensor, Tensor]:
    """``lam * x + (1 - lam) * x[perm]`` and the same for the soft targets ``y`` (N, C)."""
    return x * lam + x[perm] * (1 - lam), y * lam + y[perm] * (1 - lam)


def draw_lam(alpha: float) -> float:
    """One draw of ``Beta(alpha, alpha)``, from torch's global CPU generator."""
    a = torch.tensor(float(alpha))
    return float(torch.distributions.Beta(a, a).sample())


def draw_perm(n: int, device: torch.device) -> Tensor:
    """A random permutation of ``range(n)`` drawn on the CPU (the global generator,
    which checkpoints save: a resumed run draws the same), moved to ``device``."""
    return torch.randperm(n).to(device)


def refuse_segmentation(learn, name: str) -> None:
    """A clear line instead of mixing masks: not supported for segmentation."""
    if learn.task.name == "segmentation":
        raise SnugfitError(
            f"{name}: not supported for segmentation (it mixes class targets, not masks); "
            "remove the callback"
        )


class MixUp(Callback):
    """Blend each training batch with a shuffled copy of itself (see the module docstring).

    Only image batches (4-D ``learn.xb``) are mixed: precomputed features (2-D, while
    the head trains on them) and validation batches pass through unchanged. Targets
    become soft targets ``(N, C)``: one-hot rows for single-label data (any loss that
    takes probabilities: the default ``CrossEntropyLoss``,
    `snugfit.tasks.LabelSmoothingCrossEntropy`), the multi-hot rows for multi-label
    data (``BCEWithLogitsLoss``), mixed with the images' weight. Randomness comes from
    torch's global CPU generator, so ``resume`` continues a run exactly. Segmentation
    learners are refused at ``before_fit``.

    Args:
        alpha: the Beta distribution's parameter (> 0); small values keep most
            images nearly whole, 1 makes every weight equally likely.

    Attributes:
        lam, perm: the last batch's weight and permutation.
    """

    name = "MixUp"

    def __init__(self, alpha: float = 0.4):
        self.alpha = check_positive("alpha", alpha)
        self.lam: float | None = None
        self.perm: Tensor | None = None

    def before_fit(self, learn) -> None:
        refuse_segmentation(learn, self.name)

    def before_batch(self, learn) -> None:
        if learn.xb.ndim != 4:
            return  # precomputed features: not images
        x, y = learn.xb, soft_targets(learn.yb, learn.dls.c, learn.task.multi_label)
        self.lam, self.perm = draw_lam(self.alpha), draw_perm(len(x), x.device)
        x, learn.yb = self.mix(x, y.to(x.device))
        learn.xb = learn.prepare_input(x)  # the model's memory format again

    def mix(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return mixup_batch(x, y, self.lam, self.perm)
