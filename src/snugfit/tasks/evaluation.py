"""Evaluation in a stream: a task's loss and metrics over a set, one batch at a time.

An `Evaluator` is made by the task (``task.evaluator(loss_func, metrics, vocab)``) and
fed each batch's model outputs and targets with `Evaluator.update`; `Evaluator.result`
gives ``(loss, {metric name: value})`` over everything it was fed. It never needs the
whole set's outputs at once unless its task chooses so (classification keeps them:
they are ``N x C`` numbers; a segmentation mask set is gigabytes, so segmentation
keeps sums only).

Under torchrun each rank feeds its own shards; `Evaluator.sums` is a flat float64
tensor (on the CPU) of quantities that add up over samples, the same length on every
rank even when a rank saw nothing. Summing it over the ranks and handing the total to
`Evaluator.load_sums` makes `result` cover the whole set:

>>> import torch
>>> from torch import nn
>>> from snugfit.tasks.metrics import accuracy
>>> logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 2.0]])
>>> targets = torch.tensor([0, 0, 0, 1])
>>> rank0, rank1 = (ConcatEvaluator(nn.CrossEntropyLoss(), [accuracy]) for _ in range(2))
>>> rank0.update(logits[:1], targets[:1]); rank1.update(logits[1:], targets[1:])
>>> rank0.load_sums(rank0.sums() + rank1.sums())  # what an all-reduce does
>>> rank0.n, round(rank0.result()[1]["accuracy"], 4)
(4, 0.75)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from snugfit.tasks.metrics import metric_name


class Evaluator:
    """The streaming-evaluation protocol (see the module docstring)."""

    @property
    def n(self) -> int:
        """Samples (images) counted so far, or in the loaded sums."""
        raise NotImplementedError

    def update(self, outputs: Tensor, targets: Tensor) -> None:
        """Count one non-empty batch: model outputs (float32) and its targets."""
        raise NotImplementedError

    def sums(self) -> Tensor:
        """What `result` needs, as a flat float64 CPU tensor that adds over shards."""
        raise NotImplementedError

    def load_sums(self, sums: Tensor) -> None:
        """Take ``sums`` (e.g. every rank's `sums` added) as the state `result` reads."""
        raise NotImplementedError

    def result(self) -> tuple[float, dict[str, float]]:
        """``(loss, {metric name: value})`` over what was counted (or loaded)."""
        raise NotImplementedError


class ConcatEvaluator(Evaluator):
    """Keeps every batch's outputs and targets and measures their concatenation, as
    ``loss_func(outputs, targets)`` and ``m(outputs, targets)`` for each metric: the
    numbers of one pass over the whole set (classification: its outputs are small).

    Its `sums` are each value times the samples it covers, and the sample count: the
    sums of several shards give the whole set's values exactly for a loss and metrics
    that are means over samples (cross-entropy, accuracy, error rate, accuracy_multi,
    f1_samples); a metric that is not (a macro F1, say) becomes the mean of the
    shards' values weighted by their sizes.
    """

    def __init__(self, loss_func: Callable, metrics: Sequence[Callable]):
        self.loss_func, self.metrics = loss_func, list(metrics)
        self.outputs: list[Tensor] = []
        self.targets: list[Tensor] = []
        self.loaded: Tensor | None = None

    @property
    def n(self) -> int:
        if self.loaded is not None:
            return int(self.loaded[-1])
        return sum(len(t) for t in self.targets)

    def update(self, outputs: Tensor, targets: Tensor) -> None:
        self.outputs.append(outputs)
        self.targets.append(targets)

    def _values(self) -> list[Tensor]:
        preds, targs = torch.cat(self.outputs), torch.cat(self.targets)
        return [self.loss_func(preds, targs), *(m(preds, targs) for m in self.metrics)]

    def sums(self) -> Tensor:
        n = self.n
        if n == 0:  # a rank that saw no image adds nothing, but as many numbers
            return torch.zeros(len(self.metrics) + 2, dtype=torch.float64)
        values = [
            torch.as_tensor(v).detach().double().reshape(()).cpu() * n for v in self._values()
        ]
        return torch.stack([*values, torch.tensor(float(n), dtype=torch.float64)])

    def load_sums(self, sums: Tensor) -> None:
        self.loaded = sums.to(torch.float64).cpu()

    def result(self) -> tuple[float, dict[str, float]]:
        names = [metric_name(m) for m in self.metrics]
        if self.loaded is None:  # one process: the values themselves, unrounded
            loss, *values = (v.item() for v in self._values())
        else:
            loss, *values = (self.loaded[:-1] / self.loaded[-1]).tolist()
        return loss, dict(zip(names, values, strict=True))
