"""Segmentation metrics, from a confusion matrix of pixels summed over a whole set.

Masks hold a class index per pixel, ``VOID`` (255) where the truth is unknown; void
pixels count nowhere. `confusion_matrix` counts, over the non-void pixels of a batch,
``conf[true class, predicted class]``; confusion matrices of batches (and of ranks)
add up, and the metrics read the total, so Dice and IoU are the whole set's
intersections over its unions, not a mean of per-batch values.

Per class ``c`` (``tp`` = conf[c, c], ``fp``/``fn`` = the rest of its column/row):
Dice = 2 tp / (2 tp + fp + fn), IoU = tp / (tp + fp + fn). A class that is neither in
the truth nor predicted anywhere in the set has no score (NaN): nothing was there to
find, so it is neither a success nor a failure, and the means (`dice`, `iou`) leave it
out (scoring it 1 would flatter a model, 0 would punish it for the data). A class in
the truth but never predicted scores 0, and so does one predicted but absent from the
truth.

`dice` and `iou` average over the classes other than ``background`` (class 0 unless
the task says otherwise; None: all classes); `pixel_accuracy` is the share of
non-void pixels predicted right. A metric with nothing to average is NaN.

>>> pred = torch.tensor([[[0, 1], [1, 1]]])
>>> true = torch.tensor([[[0, 1], [0, 255]]])  # one void pixel
>>> conf = confusion_matrix(pred, true, 3)
>>> conf.tolist()
[[1, 1, 0], [0, 1, 0], [0, 0, 0]]
>>> class_dice(conf).tolist()  # class 2: absent from both
[0.6666666666666666, 0.6666666666666666, nan]
>>> dice(conf).item(), round(iou(conf).item(), 4), round(pixel_accuracy(conf).item(), 4)
(0.6666666666666666, 0.5, 0.6667)
"""

from __future__ import annotations

import torch
from torch import Tensor

from snugfit.errors import SnugfitError

VOID = 255  # a mask's "unknown" pixel value: ignored by losses and metrics


def confusion_matrix(pred: Tensor, true: Tensor, n_classes: int) -> Tensor:
    """``(n_classes, n_classes)`` int64 counts of ``(true, predicted)`` class pairs over
    the non-void pixels of ``pred`` and ``true``: class-index tensors of the same
    shape (predicted masks: ``logits.argmax(1)``). On their device."""
    if pred.shape != true.shape:
        raise SnugfitError(
            f"segmentation: predicted masks {tuple(pred.shape)} and true masks "
            f"{tuple(true.shape)} differ in size"
        )
    true = true.long()
    keep = true != VOID
    pairs = true[keep] * n_classes + pred[keep].long()
    counts = torch.bincount(pairs, minlength=n_classes * n_classes)
    if counts.numel() > n_classes * n_classes:
        raise SnugfitError(
            f"segmentation: a mask holds a value that is neither a class (0 to "
            f"{n_classes - 1}) nor {VOID} (void)"
        )
    return counts.reshape(n_classes, n_classes)


def _tp_fp_fn(conf: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    conf = conf.double()
    tp = conf.diagonal()
    return tp, conf.sum(0) - tp, conf.sum(1) - tp


def class_dice(conf: Tensor) -> Tensor:
    """Dice of each class (float64); NaN for a class absent from truth and prediction."""
    tp, fp, fn = _tp_fp_fn(conf)
    return 2 * tp / (2 * tp + fp + fn)  # 0/0 = NaN: the class was nowhere


def class_iou(conf: Tensor) -> Tensor:
    """IoU (Jaccard) of each class (float64); NaN for a class absent from both."""
    tp, fp, fn = _tp_fp_fn(conf)
    return tp / (tp + fp + fn)


def _mean_over_classes(per_class: Tensor, background: int | None) -> Tensor:
    keep = torch.ones_like(per_class, dtype=torch.bool)
    if background is not None:
        keep[background] = False
    return per_class[keep].nanmean()  # no class with a score: NaN


def dice(conf: Tensor, background: int | None = 0) -> Tensor:
    """Mean Dice over the classes other than ``background`` that have a score."""
    return _mean_over_classes(class_dice(conf), background)


def iou(conf: Tensor, background: int | None = 0) -> Tensor:
    """Mean IoU over the classes other than ``background`` that have a score."""
    return _mean_over_classes(class_iou(conf), background)


def pixel_accuracy(conf: Tensor) -> Tensor:
    """Share of non-void pixels whose predicted class is the true one (NaN: none)."""
    conf = conf.double()
    return conf.trace() / conf.sum()


SEGMENTATION_METRICS = {"dice": dice, "iou": iou, "pixel_accuracy": pixel_accuracy}
BY_BACKGROUND = ("dice", "iou")  # the names whose mean leaves the background out
