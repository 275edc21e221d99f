"""Classification metrics, computed over a whole validation set, on the device.

A metric takes the concatenated model outputs and targets of the validation
set and returns a 0-d tensor (`snugfit.tasks.evaluation.ConcatEvaluator` calls it
once per evaluation). Segmentation's metrics read a confusion matrix of pixels
instead (`snugfit.tasks.seg_metrics`).

Single-label metrics (`accuracy`, `error_rate`) take logits ``(N, C)`` and class
indices ``(N,)``; multi-label ones (`accuracy_multi`, `f1_samples`) take logits
``(N, C)`` and multi-hot targets ``(N, C)``:

>>> logits = torch.tensor([[2.0, -2.0, 1.0], [-1.0, -3.0, -2.0]])
>>> targs = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
>>> round(accuracy_multi(logits, targs).item(), 4)  # 5 of 6 decisions right
0.8333
>>> round(f1_samples(logits, targs).item(), 4)  # (2*1/(2+1) + 1) / 2: the 2nd has none, right
0.8333
"""

from __future__ import annotations

import functools

import torch


def accuracy(preds: torch.Tensor, targs: torch.Tensor) -> torch.Tensor:
    """Fraction of samples whose arg-max prediction equals the target."""
    return (preds.argmax(dim=-1) == targs).float().mean()


def error_rate(preds: torch.Tensor, targs: torch.Tensor) -> torch.Tensor:
    """1 - accuracy."""
    return 1 - accuracy(preds, targs)


def _predicted(preds: torch.Tensor, thresh: float, sigmoid: bool) -> torch.Tensor:
    return (preds.sigmoid() if sigmoid else preds) > thresh


def accuracy_multi(
    preds: torch.Tensor, targs: torch.Tensor, thresh: float = 0.5, sigmoid: bool = True
) -> torch.Tensor:
    """Fraction of (sample, class) decisions right: ``sigmoid(preds) > thresh`` vs the
    multi-hot targets (fastai's ``accuracy_multi``)."""
    return (_predicted(preds, thresh, sigmoid) == targs.bool()).float().mean()


def f1_samples(
    preds: torch.Tensor,
    targs: torch.Tensor,
    thresh: float = 0.5,
    sigmoid: bool = True,
    zero_division: float = 1.0,
) -> torch.Tensor:
    """F1 of each sample's predicted label set against its true one, averaged over samples.

    Per sample, ``2 |predicted ∩ true| / (|predicted| + |true|)`` with
    ``predicted = sigmoid(preds) > thresh``: scikit-learn's
    ``f1_score(average="samples")``. A sample with no true and no predicted label
    (an image correctly found to hold none of the classes) scores
    ``zero_division``, 1 by default (scikit-learn's default, "warn", scores it 0,
    which would cap a perfect model's F1 below 1 on data with such images).
    """
    pred = _predicted(preds, thresh, sigmoid)
    true = targs.bool()
    tp = (pred & true).sum(dim=-1).float()
    denom = (pred.sum(dim=-1) + true.sum(dim=-1)).float()
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.full_like(tp, zero_division))
    return f1.mean()


METRICS = {
    "accuracy": accuracy,
    "error_rate": error_rate,
    "accuracy_multi": accuracy_multi,
    "f1_samples": f1_samples,
}
SINGLE_LABEL = ("accuracy", "error_rate")  # names that need class-index targets
MULTI_LABEL_DEFAULTS = ("accuracy_multi", "f1_samples")


def metric_name(fn) -> str:
    """A metric's name in tables and logs (that of the function a ``partial`` wraps)."""
    if isinstance(fn, functools.partial):
        return metric_name(fn.func)
    return getattr(fn, "__name__", type(fn).__name__)
