"""The task seam: what differs between single-label, multi-label and segmentation.

A `Task` is one small object that knows, for its kind of target:

- data: the training target of an item's label and how targets stack into a batch
  (`target`, `stack_targets`, `empty_targets`), and a batch image's title (`title`);
- training: the default loss and metrics, and which metric names make sense
  (`loss`, `default_metrics`, `metric`);
- evaluation: the loss and metrics over a set, one batch at a time (`evaluator`, an
  `snugfit.tasks.evaluation.Evaluator`; under torchrun its sums add over ranks);
- prediction: outputs to probabilities (`activation`), probabilities to labels
  (`labels`), a prediction as CSV cells and as a printed line (`csv_cells`,
  `csv_values`, `line`);
- the model: whether a new head may start from ImageNet's classifier rows
  (`imagenet_head`), and what is saved with the model (`config`, `task_from_config`).

The loop, memory planning, saving, resume and the command line call these methods
and never ask which task they have.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from snugfit.errors import SnugfitError
from snugfit.tasks.evaluation import Evaluator


class Task:
    """The interface every task implements (see the module docstring)."""

    name = "task"
    multi_label = False
    imagenet_head = False  # may a new head start from ImageNet's classifier rows?
    default_metrics: tuple[str, ...] = ()  # what vision_learner measures by default
    run_metrics: tuple[str, ...] = ()  # what ``snugfit train`` reports
    classes_word = "classes"  # what the vocabulary is called in messages

    # -- data ---------------------------------------------------------------
    def target(self, label, n_classes: int):
        """The training target of one item's label."""
        raise NotImplementedError

    def stack_targets(self, targets: list) -> Tensor:
        """A batch of `target` values as one tensor."""
        raise NotImplementedError

    def empty_targets(self, n_classes: int, device: torch.device) -> Tensor:
        """The targets of an empty batch (a rank's empty shard under torchrun)."""
        raise NotImplementedError

    def title(self, target, vocab: Sequence[str]) -> str:
        """How a batch grid titles an image with this target."""
        raise NotImplementedError

    def target_bytes(self, size) -> int:
        """Bytes one sample's target takes on the device at input ``size`` (the memory
        plan counts them); a class index or a label vector: nothing worth counting."""
        return 0

    # -- training -----------------------------------------------------------
    def loss(self) -> nn.Module:
        raise NotImplementedError

    def metric(self, m):
        """A metric callable from a name (checked against the task), or ``m`` itself."""
        raise NotImplementedError

    def evaluator(self, loss_func: Callable, metrics: Sequence, vocab: Sequence[str]) -> Evaluator:
        """A fresh `Evaluator` of ``loss_func`` and ``metrics`` (from `metric`) over a set
        of these classes."""
        raise NotImplementedError

    # -- prediction -----------------------------------------------------------
    def activation(self, outputs: Tensor) -> Tensor:
        """Probabilities from model outputs."""
        raise NotImplementedError

    def outputs_of(self, probs: Tensor) -> Tensor:
        """Model outputs whose `activation` is ``probs`` (to score averaged
        probabilities, as TTA makes, with the loss and metrics)."""
        raise SnugfitError(
            f"{self.name}: no outputs from probabilities (TTA is for classification)"
        )

    def labels(self, probs: Tensor, vocab: Sequence[str]) -> list:
        """The predicted label of each row of ``probs``."""
        raise NotImplementedError

    def csv_cells(self, probs: Tensor, vocab: Sequence[str]) -> tuple[str, float]:
        """``(label text, probability)`` of one prediction, for a CSV row."""
        raise NotImplementedError

    def csv_values(self, probs: Tensor) -> list[float]:
        """One prediction's number per class, for the CSV's per-class columns."""
        raise NotImplementedError

    def line(self, path: str, label, probs: Tensor) -> str:
        """One prediction as the tab-separated line ``snugfit predict`` prints."""
        raise NotImplementedError

    # -- saving ---------------------------------------------------------------
    def config(self) -> dict:
        """What is saved with the model (plain JSON values)."""
        raise NotImplementedError


def stack_class_indices(ys: list) -> Tensor:
    """Class indices as a long ``(B,)`` tensor."""
    return torch.tensor(ys, dtype=torch.long)


def stack_vectors(ys: list) -> Tensor:
    """Per-item float32 vectors as one ``(B, C)`` tensor."""
    return torch.from_numpy(np.stack(ys))
