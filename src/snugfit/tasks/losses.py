"""Classification losses beyond the task defaults: label smoothing, on class indices
or on soft (probability) targets.

`LabelSmoothingCrossEntropy` is fastai's (argument ``eps``) and timm's (argument
``smoothing``; timm's ``SoftTargetCrossEntropy`` is the soft-target half): the
cross-entropy against the targets smoothed toward the uniform distribution,
``(1 - eps) * t + eps / C``, with ``t`` the one-hot row of a class index or a
probability row as `snugfit.callbacks.MixUp` and `snugfit.callbacks.CutMix` make.
So one loss serves training on mixed targets and validation on class indices, and
with ``eps=0`` it is ``F.cross_entropy``. timm smooths the one-hot rows before
mixing them; the two agree, as smoothing is linear: ``(1 - eps) * mix(t) + eps / C``.

>>> import torch
>>> logits = torch.tensor([[2.0, 0.0, 0.0]])
>>> smooth_labels(torch.tensor([0]), 3, 0.3)  # 0.7 * one-hot + 0.1 everywhere
tensor([[0.8000, 0.1000, 0.1000]])
>>> eps0 = LabelSmoothingCrossEntropy(eps=0.0)(logits, torch.tensor([0]))
>>> bool(torch.isclose(eps0, F.cross_entropy(logits, torch.tensor([0]))))
True
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from snugfit.errors import SnugfitError

REDUCTIONS = ("mean", "sum", "none")


def smooth_labels(targets: Tensor, n_classes: int, eps: float) -> Tensor:
    """``(N, C)`` float targets: ``(1 - eps) * t + eps / C``, where ``t`` is the one-hot
    row of each class index in ``targets`` ``(N,)``, or ``targets`` itself when it is
    already ``(N, C)`` probabilities (soft targets)."""
    if targets.ndim == 1:
        t = F.one_hot(targets.long(), n_classes).float()
    elif targets.ndim == 2 and targets.shape[1] == n_classes:
        t = targets.float()
    else:
        raise SnugfitError(
            f"targets: expected class indices (N,) or probabilities (N, {n_classes}), "
            f"got shape {tuple(targets.shape)}"
        )
    return t * (1 - eps) + eps / n_classes


def label_smoothing_cross_entropy(
    logits: Tensor, targets: Tensor, eps: float = 0.1, reduction: str = "mean"
) -> Tensor:
    """The cross-entropy of ``logits`` ``(N, C)`` against ``smooth_labels(targets, C, eps)``:
    ``-sum_c t'_c log softmax(logits)_c`` per sample, then ``reduction``."""
    logp = F.log_softmax(logits.float(), dim=-1)  # float32 also under autocast
    per_sample = -(smooth_labels(targets, logits.shape[-1], eps) * logp).sum(-1)
    if reduction == "mean":
        return per_sample.mean()
    return per_sample.sum() if reduction == "sum" else per_sample


class LabelSmoothingCrossEntropy(nn.Module):
    """Cross-entropy with label smoothing, for single-label classification.

    fastai's ``LabelSmoothingCrossEntropy(eps=0.1)``; timm calls the argument
    ``smoothing`` (``LabelSmoothingCrossEntropy(smoothing=0.1)``, ``--smoothing``) and
    uses ``SoftTargetCrossEntropy`` for mixed targets: this one takes both kinds.

    Args:
        eps: the probability mass spread evenly over all classes, ``0 <= eps < 1``
            (0: plain cross-entropy).
        reduction: "mean" (over samples, default), "sum" or "none" (one value per sample).

    Targets are class indices ``(N,)`` (validation, plain training) or probabilities
    ``(N, C)`` (MixUp/CutMix). For multi-label data (independent sigmoids) it does not
    apply: a softmax over the classes is not the model of a set of labels; the learner
    refuses it there. No ``ignore_index``: every sample counts.
    """

    def __init__(self, eps: float = 0.1, reduction: str = "mean"):
        super().__init__()
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < 1:
            raise SnugfitError(f"eps: expected a number with 0 <= eps < 1, got {eps!r}")
        if reduction not in REDUCTIONS:
            raise SnugfitError(
                f"reduction: expected one of {', '.join(REDUCTIONS)}, got {reduction!r}"
            )
        self.eps, self.reduction = float(eps), reduction

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return label_smoothing_cross_entropy(logits, targets, self.eps, self.reduction)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, reduction={self.reduction!r}"
