"""Semantic segmentation: a class per pixel.

An item's label is its mask: an ``(H, W)`` uint8 array of class indices, ``VOID``
(255) where the class is unknown (so at most 255 classes, 0 to 254). A batch of
masks is a long ``(B, H, W)`` tensor (void kept as 255); the model's outputs are
logits ``(B, C, H, W)``. The losses are in `snugfit.tasks.seg_losses`, the metrics
(Dice, IoU, pixel accuracy over a confusion matrix of the whole set) in
`snugfit.tasks.seg_metrics`; `SegmentationEvaluator` keeps that matrix, never the
masks.

>>> task = Segmentation()
>>> mask = np.array([[0, 1], [1, 255]], dtype=np.uint8)
>>> batch = task.stack_targets([task.target(mask, 3), task.target(mask, 3)])
>>> batch.dtype, tuple(batch.shape), task.title(mask, ["sky", "road", "car"])
(torch.int64, (2, 2, 2), 'road, sky')
>>> logits = torch.tensor([[[[4.0, 0.0], [0.0, 0.0]], [[0.0, 4.0], [4.0, 4.0]], [[0.0] * 2] * 2]])
>>> probs = task.activation(logits)
>>> task.labels(probs, ["sky", "road", "car"])[0].tolist()
[[0, 1], [1, 1]]
>>> task.csv_cells(probs[0], ["sky", "road", "car"])  # the class of most pixels, its share
('road', 0.75)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from snugfit.errors import SnugfitError
from snugfit.sizes import as_hw
from snugfit.tasks.evaluation import Evaluator
from snugfit.tasks.metrics import METRICS, metric_name
from snugfit.tasks.seg_losses import LOSSES
from snugfit.tasks.seg_metrics import (
    BY_BACKGROUND,
    SEGMENTATION_METRICS,
    VOID,
    class_dice,
    class_iou,
    confusion_matrix,
)
from snugfit.tasks.task import Task


class Segmentation(Task):
    """A class per pixel (see the module docstring).

    Args:
        loss: ``"ce"``: cross-entropy ignoring void; ``"dice_ce"``: soft Dice plus
            cross-entropy, both ignoring void (see `snugfit.tasks.seg_losses`).
        background: the class the mean Dice and IoU leave out (0 by default; None:
            average over every class).
        binary: the masks are binary masks marking class 1 with 255 (not void): the
            loaders read them so, and predicted masks are written so (0 and 255).
        colours: the masks are colour masks, class i painted ``colours[i]`` (r, g, b;
            a class_dict.csv): the loaders read them so, and predicted masks are
            written so.
    """

    name = "segmentation"
    multi_label = False
    imagenet_head = False  # the head is a decoder's, not a classifier of ImageNet's rows
    default_metrics = ("dice", "iou", "pixel_accuracy")
    run_metrics = ("dice", "iou", "pixel_accuracy")
    classes_word = "classes (segmentation)"

    def __init__(
        self,
        loss: str = "ce",
        background: int | None = 0,
        binary: bool = False,
        colours: Sequence[Sequence[int]] | None = None,
    ):
        if loss not in LOSSES:
            raise SnugfitError(
                f"loss: unknown segmentation loss {loss!r}; known: {', '.join(LOSSES)}"
            )
        if background is not None and not _is_index(background):
            raise SnugfitError("background: must be a class index (an integer >= 0) or None")
        self.loss_name, self.background, self.binary = loss, background, bool(binary)
        self.colours = None if colours is None else [tuple(int(v) for v in c) for c in colours]

    # -- data ---------------------------------------------------------------
    def target(self, label, n_classes: int) -> np.ndarray:
        """The mask itself, as a uint8 ``(H, W)`` array."""
        mask = np.asarray(label)
        if mask.ndim != 2:
            raise SnugfitError(f"segmentation: a mask must be (H, W), got shape {mask.shape}")
        if mask.dtype != np.uint8:
            if mask.size and (mask.min() < 0 or mask.max() > VOID):
                raise SnugfitError("segmentation: mask values must be 0 to 255")
            mask = mask.astype(np.uint8)
        return mask

    def stack_targets(self, targets: list) -> Tensor:
        """Masks (arrays or tensors of one size) as a long ``(B, H, W)`` tensor."""
        masks = [torch.as_tensor(np.asarray(t)) for t in targets]
        sizes = {tuple(m.shape) for m in masks}
        if len(sizes) > 1:
            raise SnugfitError(
                f"segmentation: masks of different sizes in one batch: {sorted(sizes)}"
            )
        return torch.stack(masks).long()

    def empty_targets(self, n_classes: int, device: torch.device) -> Tensor:
        """A long ``(0, 0, 0)`` tensor: no mask (an empty shard has no image size)."""
        return torch.empty((0, 0, 0), dtype=torch.long, device=device)

    def title(self, target, vocab: Sequence[str], most: int = 3) -> str:
        """The classes in the mask by pixel share, largest first (``most`` of them)."""
        mask = torch.as_tensor(np.asarray(target)).long().flatten()
        counts = torch.bincount(mask[mask != VOID], minlength=len(vocab))
        order = [i for i in counts.argsort(descending=True, stable=True).tolist() if counts[i]]
        names = [vocab[i] for i in order[:most]]
        more = f" +{len(order) - most}" if len(order) > most else ""
        return ", ".join(names) + more if names else "(void)"

    def mask_file(self, mask: Tensor) -> np.ndarray:
        """A predicted ``(H, W)`` mask as a mask file holds it, as the training masks
        were: uint8 class indices; for binary masks 0 and 255; for colour masks the
        classes' colours, ``(H, W, 3)``."""
        values = mask.to(torch.uint8).cpu()
        if self.colours is not None:
            return np.asarray(self.colours, dtype=np.uint8)[values.long().numpy()]
        return (values * VOID if self.binary else values).numpy()

    # -- training -----------------------------------------------------------
    def target_bytes(self, size) -> int:
        """A mask at input ``size``: its uint8 copy and its int64 targets."""
        h, w = as_hw(size)
        return h * w * (1 + 8)

    def loss(self) -> nn.Module:
        return LOSSES[self.loss_name]()

    def metric(self, m):
        """``"dice"``, ``"iou"`` (means without the background) or ``"pixel_accuracy"``;
        a callable is used as it is and receives the set's confusion matrix (``conf[true,
        predicted]`` pixel counts, `snugfit.tasks.seg_metrics`)."""
        if not isinstance(m, str):
            return m
        if m in SEGMENTATION_METRICS:
            fn = SEGMENTATION_METRICS[m]
            return functools.partial(fn, background=self.background) if m in BY_BACKGROUND else fn
        known = ", ".join(repr(n) for n in SEGMENTATION_METRICS)
        if m in METRICS:
            raise SnugfitError(
                f"metrics: {m!r} is a classification metric; for segmentation use {known}"
            )
        raise SnugfitError(f"metrics: unknown metric {m!r}; known for segmentation: {known}")

    def evaluator(self, loss_func: Callable, metrics: Sequence, vocab: Sequence[str]) -> Evaluator:
        if self.background is not None and self.background >= len(vocab):
            raise SnugfitError(
                f"background: class {self.background} is not one of the {len(vocab)} classes"
            )
        return SegmentationEvaluator(loss_func, metrics, vocab)

    # -- prediction -----------------------------------------------------------
    def activation(self, outputs: Tensor) -> Tensor:
        """Softmax over the classes: ``(N, C, H, W)`` probabilities."""
        return outputs.softmax(dim=1)

    def labels(self, probs: Tensor, vocab: Sequence[str]) -> list[Tensor]:
        """Each image's predicted mask: an ``(H, W)`` int64 tensor of class indices."""
        return list(probs.argmax(dim=1))

    def pixel_shares(self, probs: Tensor) -> Tensor:
        """``(C,)``: the share of one image's pixels predicted as each class."""
        n_classes = probs.shape[0]
        counts = torch.bincount(probs.argmax(dim=0).flatten(), minlength=n_classes)
        return counts.double() / counts.sum()

    def csv_cells(self, probs: Tensor, vocab: Sequence[str]) -> tuple[str, float]:
        """The class predicted on most of the image's pixels, and that share."""
        shares = self.pixel_shares(probs)
        i = int(shares.argmax())
        return vocab[i], shares[i].item()

    def csv_values(self, probs: Tensor) -> list[float]:
        """The CSV's per-class numbers: each class's pixel share."""
        return self.pixel_shares(probs).tolist()

    def line(self, path: str, label: Tensor, probs: Tensor) -> str:
        """``path``, the mask's ``HxW``, each class's pixel share (vocabulary order)."""
        h, w = label.shape
        shares = " ".join(f"{s:.4f}" for s in self.pixel_shares(probs).tolist())
        return f"{path}\t{h}x{w}\t{shares}"

    # -- saving ---------------------------------------------------------------
    def config(self) -> dict:
        """The class names are the model file's ``vocab``; the task adds its own fields."""
        out = {"task": "segmentation", "loss": self.loss_name, "background": self.background}
        if self.colours is not None:
            out["colours"] = [list(c) for c in self.colours]
        return {**out, "binary": True} if self.binary else out

    @classmethod
    def from_config(cls, cfg: dict, where: str) -> Segmentation:
        """The task of `config` (fields checked: a file may come from someone else)."""
        loss, background = cfg.get("loss", "ce"), cfg.get("background", 0)
        if loss not in LOSSES:
            raise SnugfitError(f"{where}: field 'loss' must be one of {', '.join(LOSSES)}")
        vocab = cfg.get("vocab")
        n = len(vocab) if isinstance(vocab, list) else VOID
        if background is not None and not (_is_index(background) and background < n):
            raise SnugfitError(f"{where}: field 'background' must be a class index or null")
        binary = cfg.get("binary", False)
        if not isinstance(binary, bool) or (binary and n != 2):
            raise SnugfitError(f"{where}: field 'binary' must be true (with two classes) or false")
        colours = cfg.get("colours")
        if colours is not None and not _colour_table(colours, n):
            raise SnugfitError(f"{where}: field 'colours' must be one [r, g, b] (0-255) a class")
        return cls(loss, background, binary, colours)


def _colour_table(colours, n: int) -> bool:
    """Whether ``colours`` is ``n`` colours, each three integers 0-255."""
    return (
        isinstance(colours, list)
        and len(colours) == n
        and all(isinstance(c, list) and len(c) == 3 and all(_is_index(v) and v < 256 for v in c)
                for c in colours)
    )  # fmt: skip


def _is_index(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


class SegmentationEvaluator(Evaluator):
    """Streams a segmentation set: the loss's sum weighted by images, the image count
    and the ``(C, C)`` pixel confusion matrix; the metrics read the matrix (see
    `snugfit.tasks.seg_metrics`). `sums` is ``[loss sum, images, conf...]``.

    The loss of the set is the mean of the batches' losses weighted by their image
    counts: for this task's losses (means over images) that is the whole set's.
    """

    def __init__(self, loss_func: Callable, metrics: Sequence, vocab: Sequence[str]):
        if len(vocab) > VOID:
            raise SnugfitError(
                f"segmentation: at most {VOID} classes ({VOID} is void), got {len(vocab)}"
            )
        self.loss_func, self.metrics, self.vocab = loss_func, list(metrics), list(vocab)
        n_classes = len(self.vocab)
        self.losses: list[Tensor] = []  # each batch's loss times its images, on the device
        self.images = 0
        self.conf = torch.zeros(n_classes, n_classes, dtype=torch.long)

    @property
    def n(self) -> int:
        return self.images

    def update(self, outputs: Tensor, targets: Tensor) -> None:
        targets = targets.long()
        loss = self.loss_func(outputs, targets).detach().float().reshape(())
        self.losses.append(loss * len(targets))
        counts = confusion_matrix(outputs.argmax(dim=1), targets, len(self.vocab))
        if self.conf.device != counts.device:
            self.conf = self.conf.to(counts.device)
        self.conf += counts
        self.images += len(targets)

    def _loss_sum(self) -> Tensor:
        if not self.losses:
            return torch.zeros((), dtype=torch.float64)
        return torch.stack(self.losses).cpu().double().sum()  # one copy from the device

    def sums(self) -> Tensor:
        images = torch.tensor(float(self.images), dtype=torch.float64)
        return torch.cat(
            [torch.stack([self._loss_sum(), images]), self.conf.double().cpu().flatten()]
        )

    def load_sums(self, sums: Tensor) -> None:
        sums = sums.to(torch.float64).cpu()
        self.losses, self.images = [sums[0]], int(sums[1])
        self.conf = sums[2:].round().long().reshape(self.conf.shape)

    def confusion(self) -> Tensor:
        """``conf[true, predicted]``: the set's non-void pixel counts (CPU int64)."""
        return self.conf.cpu()

    def result(self) -> tuple[float, dict[str, float]]:
        loss = (self._loss_sum() / self.images).item() if self.images else float("nan")
        conf = self.confusion()
        return loss, {metric_name(m): float(m(conf)) for m in self.metrics}

    def per_class(self) -> dict[str, dict[str, float]]:
        """``{"dice": {class: value}, "iou": {class: value}}``; NaN: a class absent from
        both truth and prediction in the whole set."""
        conf = self.confusion()
        return {
            "dice": dict(zip(self.vocab, class_dice(conf).tolist(), strict=True)),
            "iou": dict(zip(self.vocab, class_iou(conf).tolist(), strict=True)),
        }
