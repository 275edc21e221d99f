"""Segmentation losses: logits ``(N, C, H, W)``, masks ``(N, H, W)`` of class indices
with ``VOID`` (255) pixels, which count nowhere.

Both losses are a mean over *images* of a per-image value. That is a choice: the
usual ``CrossEntropyLoss(ignore_index=255)`` is a mean over the batch's non-void
pixels, so an image's weight depends on how much void the other images hold, and the
mean of two micro-batches' losses is not the batch's loss. A mean over images is: the
loop's micro-batches (weighted by their image count), torchrun's shards and
evaluation in chunks all give the loss of the whole batch. The two agree whenever
the images of a batch hold as many void pixels (e.g. none).

- `SegmentationCrossEntropy`: per image, the cross-entropy averaged over its
  non-void pixels (0 for an image that is all void, so a void crop never yields NaN).
- `DiceCrossEntropy`: that plus a soft Dice loss, ``1 - 2 sum(p g) / (sum(p) + sum(g))``
  per class with ``p`` the softmax probabilities and ``g`` the one-hot truth over the
  image's non-void pixels, averaged over the classes present in the image's truth
  (background included; an absent class has no Dice to learn from, and the
  cross-entropy already punishes predicting it). Equal weights, as MONAI's
  ``DiceCELoss`` by default.

>>> logits = torch.zeros(1, 2, 1, 2)  # two pixels, both classes equally likely
>>> mask = torch.tensor([[[1, 255]]])
>>> round(SegmentationCrossEntropy()(logits, mask).item(), 4)  # log 2: the void pixel counts nowhere
0.6931
>>> round(DiceCrossEntropy()(logits, mask).item(), 4)  # + 1 - 2 * 0.5 / (0.5 + 1)
1.0265
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from snugfit.tasks.seg_metrics import VOID


def _per_image_mean(values: Tensor, keep: Tensor) -> Tensor:
    """Each image's mean of ``values`` (N, H, W) over its ``keep`` pixels (0 if none)."""
    total = (values * keep).flatten(1).sum(1)
    return total / keep.flatten(1).sum(1).clamp_min(1)


def cross_entropy_per_image(logits: Tensor, masks: Tensor) -> Tensor:
    """``(N,)``: each image's cross-entropy over its non-void pixels."""
    masks = masks.long()
    ce = F.cross_entropy(logits.float(), masks, ignore_index=VOID, reduction="none")
    return _per_image_mean(ce, masks != VOID)


def soft_dice_per_image(logits: Tensor, masks: Tensor) -> Tensor:
    """``(N,)``: each image's soft Dice loss, averaged over the classes in its truth."""
    masks = masks.long()
    keep = (masks != VOID).unsqueeze(1)  # (N, 1, H, W)
    probs = logits.float().softmax(dim=1) * keep
    classes = torch.arange(logits.shape[1], device=masks.device).view(1, -1, 1, 1)
    truth = masks.unsqueeze(1) == classes  # (N, C, H, W) bool; a void pixel is no class
    inter = (probs * truth).sum((2, 3))
    pred_sum, true_sum = probs.sum((2, 3)), truth.sum((2, 3))
    present = true_sum > 0  # (N, C); its Dice denominator is then > 0
    loss = 1 - 2 * inter / (pred_sum + true_sum).clamp_min(1e-12)
    return (loss * present).sum(1) / present.sum(1).clamp_min(1)


class SegmentationCrossEntropy(nn.Module):
    """Cross-entropy ignoring void, averaged per image then over images (see above)."""

    def forward(self, logits: Tensor, masks: Tensor) -> Tensor:
        return cross_entropy_per_image(logits, masks).mean()


class DiceCrossEntropy(nn.Module):
    """Soft Dice + cross-entropy, both ignoring void, per image then over images."""

    def forward(self, logits: Tensor, masks: Tensor) -> Tensor:
        per_image = cross_entropy_per_image(logits, masks) + soft_dice_per_image(logits, masks)
        return per_image.mean()


LOSSES = {"ce": SegmentationCrossEntropy, "dice_ce": DiceCrossEntropy}
