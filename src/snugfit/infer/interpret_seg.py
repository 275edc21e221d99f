"""What a segmentation model gets wrong: per-class Dice and IoU, the pixel confusion
matrix, and the validation images with the lowest Dice.

`SegmentationInterpretation.from_learner` makes one pass over the validation set: the
task's evaluator sums the set's pixel confusion matrix (never keeping the masks), and
each image's own Dice is measured (the mean over the non-background classes present in
its truth or its prediction), keeping the ``k`` lowest as small thumbnails of image,
truth and prediction for the report.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from snugfit.data.augment import denormalize
from snugfit.errors import SnugfitError
from snugfit.tasks.seg_metrics import VOID, class_dice, class_iou, confusion_matrix

THUMB = 160  # the longer side of a report thumbnail, in pixels


@dataclass
class Worst:
    """One validation image with its Dice: thumbnails of the image (floats in [0, 1],
    ``(3, h, w)``), its truth and the prediction (class indices, ``(h, w)``)."""

    dice: float
    index: int
    image: Tensor
    truth: Tensor
    pred: Tensor


@dataclass
class SegmentationInterpretation:
    """One segmentation prediction set, as the report shows it."""

    vocab: list[str]
    confusion: Tensor  # (C, C): pixels of true class (row) predicted as class (column)
    background: int | None = 0
    worst: list[Worst] = field(default_factory=list)  # the lowest Dice first

    def per_class(self) -> list[dict]:
        """Per class: ``class``, ``dice``, ``iou`` (NaN when the class is absent from
        both truth and prediction) and ``pixels`` (its true pixels)."""
        dice, iou = class_dice(self.confusion), class_iou(self.confusion)
        pixels = self.confusion.sum(1)
        return [
            {"class": c, "dice": float(d), "iou": float(i), "pixels": int(n)}
            for c, d, i, n in zip(self.vocab, dice, iou, pixels, strict=True)
        ]

    @classmethod
    def from_learner(cls, learn, dl=None, k: int = 6) -> SegmentationInterpretation:
        """Predict ``dl`` (default: the validation set) with ``learn`` (see the module)."""
        dl = learn.dls.valid if dl is None and learn.dls is not None else dl
        if dl is None:
            raise SnugfitError("from_learner: this learner has no data; pass dl=")
        n_classes, pre = len(learn.vocab), learn.preprocessing
        background = getattr(learn.task, "background", 0)
        conf = torch.zeros(n_classes, n_classes, dtype=torch.long)
        heap: list[tuple[float, int, Worst]] = []  # the k lowest Dice, as a max-heap
        learn.model.eval()
        seen = 0
        with torch.no_grad():
            for xb, yb in dl:
                if len(xb) == 0:
                    continue
                pred = learn.eval_outputs(xb).argmax(dim=1)
                conf += confusion_matrix(pred, yb, n_classes).cpu()
                for j in range(len(xb)):
                    d = image_dice(pred[j], yb[j], n_classes, background)
                    if len(heap) < k or -heap[0][0] > d:
                        w = Worst(d, seen + j, *_thumbs(xb[j], yb[j], pred[j], pre))
                        heapq.heappush(heap, (-d, -(seen + j), w))
                        if len(heap) > k:
                            heapq.heappop(heap)
                seen += len(xb)
        if not seen:
            raise SnugfitError("the validation set yielded no images (all unreadable?)")
        worst = [w for _, _, w in sorted(heap, key=lambda t: (-t[0], -t[1]))]
        return cls(list(learn.vocab), conf, background, worst)


def image_dice(pred: Tensor, truth: Tensor, n_classes: int, background: int | None = 0) -> float:
    """One image's Dice: the mean over its non-background classes present in its truth
    or its prediction (void ignored); 1 when there are none (nothing to find, nothing
    found)."""
    d = class_dice(confusion_matrix(pred[None], truth[None], n_classes).cpu())
    keep = ~d.isnan()
    if background is not None and background < n_classes:
        keep[background] = False
    return float(d[keep].mean()) if keep.any() else 1.0


def _thumbs(x: Tensor, y: Tensor, pred: Tensor, pre) -> tuple[Tensor, Tensor, Tensor]:
    """Small copies for the report: the image in [0, 1], truth and prediction."""
    h, w = x.shape[-2:]
    scale = min(1.0, THUMB / max(h, w))
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    img = denormalize(x[None].float().cpu(), pre.mean, pre.std).clamp(0, 1)
    img = F.interpolate(img, size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    masks = torch.stack([y.cpu().long(), pred.cpu().long()])[:, None].float()
    masks = F.interpolate(masks, size=size, mode="nearest")[:, 0].long()
    return img.clamp(0, 1), masks[0], masks[1]


def colour_masks(masks: Tensor, n_classes: int) -> Tensor:
    """Class-index masks ``(..., h, w)`` as RGB floats ``(..., 3, h, w)``: a fixed
    colour per class, void white."""
    palette = _palette(n_classes)
    m = masks.long().clone()
    m[m == VOID] = n_classes  # the last colour: white
    out = palette[m.clamp(max=n_classes)]  # (..., h, w, 3)
    return out.movedim(-1, -3)


def _palette(n_classes: int) -> Tensor:
    g = torch.Generator().manual_seed(1)
    colours = torch.rand(max(n_classes, 1), 3, generator=g) * 0.8 + 0.1
    colours[0] = torch.tensor([0.0, 0.0, 0.0])  # background black
    return torch.cat([colours[:n_classes], torch.ones(1, 3)])
