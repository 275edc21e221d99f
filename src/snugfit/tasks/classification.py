"""Classification tasks: one class per image (softmax), or a set of classes (sigmoids).

>>> import torch
>>> probs = torch.tensor([[0.9, 0.6, 0.1]])
>>> SingleLabel().labels(probs, ["a", "b", "c"]), MultiLabel(0.5).labels(probs, ["a", "b", "c"])
(['a'], [['a', 'b']])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from snugfit.errors import SnugfitError
from snugfit.tasks.evaluation import ConcatEvaluator, Evaluator
from snugfit.tasks.metrics import METRICS, MULTI_LABEL_DEFAULTS, SINGLE_LABEL
from snugfit.tasks.seg_metrics import SEGMENTATION_METRICS
from snugfit.tasks.task import Task, stack_class_indices, stack_vectors


def _named_metric(m, refused: Sequence[str], hint: str):
    if not isinstance(m, str):
        return m
    if m in SEGMENTATION_METRICS:
        raise SnugfitError(f"metrics: {m!r} needs segmentation data")
    if m not in METRICS:
        raise SnugfitError(f"metrics: unknown metric {m!r}; known: {', '.join(METRICS)}")
    if m in refused:
        raise SnugfitError(f"metrics: {m!r} needs {hint}")
    return METRICS[m]


class _Classification(Task):
    """What both classification tasks share: evaluation over the set's outputs."""

    def evaluator(self, loss_func: Callable, metrics: Sequence, vocab: Sequence[str]) -> Evaluator:
        return ConcatEvaluator(loss_func, metrics)

    def csv_values(self, probs: Tensor) -> list[float]:
        return probs.tolist()


class SingleLabel(_Classification):
    """One class per image: cross-entropy on logits, softmax probabilities."""

    name = "single_label"
    multi_label = False
    imagenet_head = True
    default_metrics = ("error_rate",)
    run_metrics = ("accuracy", "error_rate")

    def target(self, label: int, n_classes: int) -> int:
        return int(label)

    def stack_targets(self, targets: list) -> Tensor:
        return stack_class_indices(targets)

    def empty_targets(self, n_classes: int, device: torch.device) -> Tensor:
        return torch.empty(0, dtype=torch.long, device=device)

    def title(self, target: int, vocab: Sequence[str]) -> str:
        return vocab[target]

    def loss(self) -> nn.Module:
        return nn.CrossEntropyLoss()

    def metric(self, m):
        multi = " or ".join(repr(n) for n in MULTI_LABEL_DEFAULTS)
        return _named_metric(m, (), f"multi-label data; use {multi}")

    def activation(self, outputs: Tensor) -> Tensor:
        return outputs.softmax(dim=-1)

    def outputs_of(self, probs: Tensor) -> Tensor:
        return probs.clamp_min(1e-12).log()  # softmax(log p) = p for rows summing to 1

    def labels(self, probs: Tensor, vocab: Sequence[str]) -> list[str]:
        return [vocab[i] for i in probs.argmax(dim=-1).tolist()]

    def csv_cells(self, probs: Tensor, vocab: Sequence[str]) -> tuple[str, float]:
        i = int(probs.argmax())
        return vocab[i], probs[i].item()

    def line(self, path: str, label: str, probs: Tensor) -> str:
        return f"{path}\t{label}\t{probs.max().item():.4f}"

    def config(self) -> dict:
        return {"multi_label": False}


class MultiLabel(_Classification):
    """Any set of classes per image (possibly none): a sigmoid and binary
    cross-entropy per class (fastai's ``BCEWithLogitsLossFlat``: the mean over samples
    and classes); a class is predicted when its probability is above ``threshold``."""

    name = "multi_label"
    multi_label = True
    # ImageNet's rows are logits of a softmax over 1000 classes, not independent sigmoids.
    imagenet_head = False
    default_metrics = MULTI_LABEL_DEFAULTS
    run_metrics = MULTI_LABEL_DEFAULTS
    classes_word = "labels (multi-label)"

    def __init__(self, threshold: float = 0.5):
        self.threshold = float(threshold)

    def with_threshold(self, threshold: float) -> MultiLabel:
        """The same task deciding at another threshold (tasks are shared: never edited)."""
        return MultiLabel(threshold)

    def target(self, label: Sequence[int], n_classes: int) -> np.ndarray:
        t = np.zeros(n_classes, dtype=np.float32)
        t[list(label)] = 1.0
        return t

    def stack_targets(self, targets: list) -> Tensor:
        return stack_vectors(targets)

    def empty_targets(self, n_classes: int, device: torch.device) -> Tensor:
        return torch.empty((0, n_classes), device=device)

    def title(self, target: Sequence[float], vocab: Sequence[str]) -> str:
        names = [vocab[i] for i, on in enumerate(target) if on]
        return ";".join(names) or "(none)"

    def loss(self) -> nn.Module:
        return nn.BCEWithLogitsLoss()

    def metric(self, m):
        multi = " or ".join(repr(n) for n in MULTI_LABEL_DEFAULTS)
        return _named_metric(m, SINGLE_LABEL, f"single-label data; for multi-label use {multi}")

    def activation(self, outputs: Tensor) -> Tensor:
        return outputs.sigmoid()

    def outputs_of(self, probs: Tensor) -> Tensor:
        return torch.logit(probs, eps=1e-6)

    def labels(self, probs: Tensor, vocab: Sequence[str]) -> list[list[str]]:
        above = (probs > self.threshold).tolist()
        return [[c for c, on in zip(vocab, row, strict=True) if on] for row in above]

    def csv_cells(self, probs: Tensor, vocab: Sequence[str]) -> tuple[str, float]:
        chosen = [c for c, p in zip(vocab, probs.tolist(), strict=True) if p > self.threshold]
        return " ".join(chosen), probs.max().item()

    def line(self, path: str, label: list[str], probs: Tensor) -> str:
        chosen = probs[probs > self.threshold].tolist()
        return f"{path}\t{' '.join(label)}\t{' '.join(f'{p:.4f}' for p in chosen)}"

    def config(self) -> dict:
        return {"multi_label": True, "threshold": self.threshold}
