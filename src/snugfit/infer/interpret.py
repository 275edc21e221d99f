"""What a classifier gets wrong: confusion matrix, top losses, per-class report.

`ClassificationInterpretation` holds one prediction set (probabilities, targets,
per-item cross-entropy losses and, when known, the items' files); everything it
reports is computed from those, so it can be built from given numbers and
checked by hand, or filled from a learner with `from_learner` (fastai's API):

>>> import torch
>>> interp = ClassificationInterpretation(
...     torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.8, 0.2]]), torch.tensor([0, 0, 1]), ["a", "b"]
... )
>>> interp.confusion_matrix().tolist()
[[1, 1], [1, 0]]
>>> interp.most_confused()
[('a', 'b', 1), ('b', 'a', 1)]

Zero divisions count as 0, as scikit-learn's ``zero_division=0``: a class that is
never predicted has precision 0, a class with no items has recall 0, and F1 is 0
when precision and recall both are.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from snugfit.errors import SnugfitError, check_count
from snugfit.infer.interpret_seg import SegmentationInterpretation

log = logging.getLogger("snugfit")

# Above this many classes the confusion matrix's cells are too small for numbers.
_MAX_ANNOTATED = 30


class ClassificationInterpretation:
    """One set of single-label predictions and what can be read from it.

    Args:
        probs: ``(N, C)`` class probabilities (rows sum to 1).
        targets: ``(N,)`` class indices.
        vocab: the ``C`` class names.
        items: the ``N`` image files, for `plot_top_losses` (optional).
        losses: ``(N,)`` per-item losses; default cross-entropy, ``-log probs[i, targets[i]]``.
        size: size of the images `plot_top_losses` decodes from ``items`` (a side or
            ``(height, width)``).
        crop_pct: their center-crop fraction (the validation transform).
        images: where `plot_top_losses` gets images when there are no files:
            ``images(indices) -> (k, 3, H, W)`` floats in [0, 1].

    Attributes:
        preds: ``(N,)`` the predicted classes (arg-max; ties go to the lower index).
    """

    def __init__(
        self,
        probs,
        targets,
        vocab: Sequence[str],
        items: Sequence[str | os.PathLike] | None = None,
        losses=None,
        size=224,
        crop_pct: float = 0.875,
        images: Callable[[list[int]], torch.Tensor] | None = None,
    ):
        self.probs = torch.as_tensor(probs).detach().float().cpu()
        self.targets = torch.as_tensor(targets).detach().long().cpu()
        self.vocab = [str(v) for v in vocab]
        if self.targets.ndim != 1 or len(self.targets) == 0:
            raise SnugfitError(f"targets: expected a non-empty 1-d tensor, got {self.targets}")
        n, c = len(self.targets), len(self.vocab)
        if self.probs.shape != (n, c):
            raise SnugfitError(
                f"probs: expected shape ({n}, {c}) for {n} targets and {c} classes, "
                f"got {tuple(self.probs.shape)}"
            )
        if self.targets.min() < 0 or self.targets.max() >= c:
            raise SnugfitError(f"targets: class indices must be in [0, {c}), got {self.targets}")
        self.items = None if items is None else [Path(p) for p in items]
        if self.items is not None and len(self.items) != n:
            raise SnugfitError(f"items: expected {n} files, got {len(self.items)}")
        if losses is None:
            actual = self.probs[torch.arange(n), self.targets]
            losses = -actual.clamp_min(torch.finfo(torch.float32).tiny).log()
        self.losses = torch.as_tensor(losses).detach().float().cpu()
        if self.losses.shape != (n,):
            raise SnugfitError(f"losses: expected shape ({n},), got {tuple(self.losses.shape)}")
        self.preds = self.probs.argmax(dim=-1)
        self.size, self.crop_pct = size, crop_pct
        self._images = images

    @classmethod
    def from_learner(cls, learn, dl=None) -> ClassificationInterpretation:
        """Predict ``dl`` (default: the validation set) with ``learn.get_preds``.

        Losses are the unreduced cross-entropy of the model's outputs. The files
        come from the loader's ``items`` when it has them (an `ImageDataLoaders`
        loader); otherwise `plot_top_losses` shows the loader's own (denormalised)
        batches.

        Raises:
            SnugfitError: ``learn`` is a multi-label learner (not supported yet).
        """
        if getattr(learn, "multi_label", False):
            raise SnugfitError(
                "from_learner: interpretation is for single-label classifiers; this learner "
                "is multi-label (score learn.get_preds() with snugfit.tasks.metrics.f1_samples)"
            )
        dl = _default_loader(learn, dl, "from_learner")
        outs, targs = learn.get_preds(dl)
        outs, targs = outs.float().cpu(), targs.cpu()
        pre, items = learn.preprocessing, _item_paths(dl, targs)
        images = None
        if items is None:
            mean, std = pre.mean, pre.std
            images = lambda idx: _images_from_loader(dl, idx, mean, std)  # noqa: E731
        return cls(
            outs.softmax(dim=-1),
            targs,
            learn.vocab,
            items=items,
            losses=F.cross_entropy(outs, targs, reduction="none"),
            size=pre.size,
            crop_pct=pre.crop_pct,
            images=images,
        )

    def __len__(self) -> int:
        return len(self.targets)

    # -- numbers --------------------------------------------------------------
    def confusion_matrix(self) -> torch.Tensor:
        """``(C, C)`` int64 counts: rows are the actual classes, columns the predicted."""
        c = len(self.vocab)
        return torch.bincount(self.targets * c + self.preds, minlength=c * c).view(c, c)

    def top_losses(self, k: int | None = None, largest: bool = True):
        """The ``k`` largest (or smallest) losses and their item indices, sorted.

        Returns:
            ``(losses, indices)``; equal losses keep item order. ``k=None``: all items.
        """
        k = len(self) if k is None else min(check_count("k", k, 1), len(self))
        losses, idx = torch.sort(self.losses, descending=largest, stable=True)
        return losses[:k], idx[:k]

    def most_confused(self, min_val: int = 1) -> list[tuple[str, str, int]]:
        """``(actual, predicted, count)`` for each off-diagonal cell with ``count >= min_val``.

        Sorted by count, largest first; equal counts in (actual, predicted) class order.
        """
        check_count("min_val", min_val, 1)
        cm = self.confusion_matrix()
        off = (cm >= min_val) & ~torch.eye(len(self.vocab), dtype=torch.bool)
        found = [(self.vocab[a], self.vocab[p], int(cm[a, p])) for a, p in off.nonzero().tolist()]
        return sorted(found, key=lambda t: -t[2])  # stable: ties stay in class order

    def per_class_report(self) -> dict:
        """Precision, recall, F1 and support per class, with their averages.

        Returns:
            ``{"classes": [{"class", "precision", "recall", "f1", "support"}, ...],
            "macro": {...}, "weighted": {...}, "accuracy": float}`` of plain Python
            numbers. "macro" averages the classes equally (every class of the
            vocabulary, also those without items), "weighted" by their support;
            the averages' "support" is the number of items. Zero divisions give 0.
        """
        cm = self.confusion_matrix()
        tp, support = cm.diag().tolist(), cm.sum(1).tolist()
        report = _scores(self.vocab, tp, cm.sum(0).tolist(), support, len(self))
        return {**report, "accuracy": sum(tp) / len(self)}

    def report_table(self) -> Table:
        """`per_class_report` as a rich table."""
        report = self.per_class_report()
        table = Table(title="per-class report")
        table.add_column("class")
        for name in ("precision", "recall", "f1", "support"):
            table.add_column(name, justify="right")

        def row(name: str, r: dict, end_section: bool = False) -> None:
            cells = [f"{r[k]:.4f}" for k in ("precision", "recall", "f1")]
            table.add_row(name, *cells, str(r["support"]), end_section=end_section)

        for i, r in enumerate(report["classes"]):
            row(r["class"], r, end_section=i == len(report["classes"]) - 1)
        row("macro avg", report["macro"])
        row("weighted avg", report["weighted"])
        table.add_row("accuracy", "", "", f"{report['accuracy']:.4f}", str(len(self)))
        return table

    def print_report(self, console: Console | None = None) -> None:
        """Print `report_table` (to stdout, or to ``console``)."""
        (console or Console()).print(self.report_table())

    def __str__(self) -> str:
        out = io.StringIO()
        Console(file=out, width=100, force_terminal=False, color_system=None).print(
            self.report_table()
        )
        return out.getvalue()

    # -- plots ------------------------------------------------------------------
    def plot_confusion_matrix(self, path: str | os.PathLike | None = None, normalize: bool = False):
        """Draw the confusion matrix, class names on the axes and counts in the cells.

        Args:
            path: PNG file to write; None returns the matplotlib ``Figure``.
            normalize: show each row as fractions of the actual class's items.

        Returns:
            The path written, or the figure.
        """
        from matplotlib.figure import Figure  # Figure alone needs no display/pyplot

        cm = self.confusion_matrix()
        values = cm.double()
        if normalize:
            values = values / values.sum(dim=1, keepdim=True).clamp_min(1)
        c = len(self.vocab)
        side = min(max(4.0, 0.45 * c + 2.5), 24.0)
        fig = Figure(figsize=(side, side))
        ax = fig.add_subplot()
        top = 1.0 if normalize else max(1.0, float(values.max()))
        ax.imshow(values.numpy(), cmap="Blues", vmin=0, vmax=top)
        ax.set_xticks(range(c), labels=self.vocab, rotation=90)
        ax.set_yticks(range(c), labels=self.vocab)
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual")
        ax.set_title("confusion matrix" + (" (fraction of each actual class)" if normalize else ""))
        if c <= _MAX_ANNOTATED:
            for a in range(c):
                for p in range(c):
                    v = float(values[a, p])
                    text = f"{v:.2f}" if normalize else str(int(cm[a, p]))
                    colour = "white" if v > top / 2 else "black"
                    ax.text(p, a, text, ha="center", va="center", color=colour, fontsize=9)
        fig.tight_layout()
        return _save_or_return(fig, path)

    def plot_top_losses(
        self, k: int = 9, path: str | os.PathLike | None = None, largest: bool = True
    ):
        """A grid of the ``k`` images with the largest losses.

        Each is titled ``predicted/actual`` over ``loss / probability of the actual
        class``. Images are decoded from ``items`` with the validation transform at
        ``size``, or taken from the loader's batches (`from_learner` without files).

        Returns:
            The path written, or the ``Figure`` when ``path`` is None.
        """
        from matplotlib.figure import Figure

        losses, idx = self.top_losses(k, largest)
        idx = idx.tolist()
        images = self.images_at(idx)
        cols = math.ceil(math.sqrt(len(idx)))
        rows = math.ceil(len(idx) / cols)
        fig = Figure(figsize=(2.4 * cols, 2.6 * rows + 0.6))
        fig.suptitle("predicted/actual\nloss / probability of the actual class", fontsize=10)
        for pos, (i, img) in enumerate(zip(idx, images, strict=True)):
            ax = fig.add_subplot(rows, cols, pos + 1)
            ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy())
            actual = int(self.targets[i])
            ax.set_title(
                f"{self.vocab[int(self.preds[i])]}/{self.vocab[actual]}\n"
                f"{float(losses[pos]):.2f} / {float(self.probs[i, actual]):.2f}",
                fontsize=9,
            )
            ax.axis("off")
        fig.tight_layout()
        return _save_or_return(fig, path)

    def images_at(self, idx: list[int]) -> torch.Tensor:
        """Images of items ``idx`` as floats in [0, 1], ``(k, 3, H, W)``."""
        if self.items is not None:
            from snugfit.data.decode import decode_valid

            decoded = [decode_valid(self.items[i], self.size, self.crop_pct) for i in idx]
            return torch.stack(decoded).float() / 255
        if self._images is not None:
            return self._images(idx)
        raise SnugfitError(
            "plot_top_losses: no images to show; pass items=[image files] or use from_learner"
        )


def per_label_report(probs, targets, vocab: Sequence[str], thresh: float = 0.5) -> dict:
    """Precision, recall, F1 and support per label of multi-label predictions.

    A label is predicted when its probability is above ``thresh`` (as `Learner.predict`
    and the metrics decide); each label is scored as its own yes/no question.

    >>> probs = torch.tensor([[0.9, 0.2], [0.7, 0.6], [0.1, 0.8]])
    >>> targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    >>> r = per_label_report(probs, targets, ["cat", "dog"])
    >>> [(c["class"], c["precision"], c["recall"], c["support"]) for c in r["classes"]]
    [('cat', 0.5, 1.0, 1), ('dog', 1.0, 1.0, 2)]
    >>> round(r["f1_samples"], 4)  # (1 + 2/3 + 1) / 3
    0.8889

    Returns:
        ``{"classes": [{"class", "precision", "recall", "f1", "support"}, ...],
        "macro": {...}, "weighted": {...}, "f1_samples": float, "accuracy_multi":
        float, "threshold": float}`` of plain Python numbers, as
        `ClassificationInterpretation.per_class_report`; the averages' "support"
        is the number of images. Zero divisions give 0.
    """
    from snugfit.tasks.metrics import accuracy_multi, f1_samples

    probs = torch.as_tensor(probs).detach().float().cpu()
    targets = torch.as_tensor(targets).detach().float().cpu()
    if probs.ndim != 2 or probs.shape != targets.shape or probs.shape[1] != len(vocab):
        raise SnugfitError(
            f"probs and targets: expected two (N, {len(vocab)}) tensors, "
            f"got {tuple(probs.shape)} and {tuple(targets.shape)}"
        )
    pred, true = probs > thresh, targets.bool()
    tp = (pred & true).sum(0).tolist()
    report = _scores(vocab, tp, pred.sum(0).tolist(), true.sum(0).tolist(), len(probs))
    decided = {"thresh": thresh, "sigmoid": False}
    return {
        **report,
        "f1_samples": f1_samples(probs, targets, **decided).item(),
        "accuracy_multi": accuracy_multi(probs, targets, **decided).item(),
        "threshold": thresh,
    }


def _scores(vocab: Sequence[str], tp: list, predicted: list, support: list, total: int) -> dict:
    """Per-class precision, recall and F1 from counts, with macro and weighted averages."""
    rows = []
    for name, t, p_n, s in zip(vocab, tp, predicted, support, strict=True):
        precision = t / p_n if p_n else 0.0
        recall = t / s if s else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append(
            {"class": name, "precision": precision, "recall": recall, "f1": f1, "support": s}
        )

    def average(weights: list[float]) -> dict:
        norm = sum(weights)
        avg = {
            key: sum(w * r[key] for w, r in zip(weights, rows, strict=True)) / norm if norm else 0.0
            for key in ("precision", "recall", "f1")
        }
        return {**avg, "support": total}

    return {
        "classes": rows,
        "macro": average([1.0] * len(rows)),
        "weighted": average([float(s) for s in support]),
    }


def _default_loader(learn, dl, what: str):
    """``dl``, or the learner's validation loader."""
    if dl is not None:
        return dl
    if learn.dls is None:
        raise SnugfitError(f"{what}: this learner has no data; pass dl=(a loader of batches)")
    return learn.dls.valid


def _item_paths(dl, targs: torch.Tensor) -> list[Path] | None:
    """The files behind the predictions of ``dl``, when its ``items`` line up with them.

    Files that failed to decode while predicting were dropped from the batches;
    they are in the loader's ``skipped`` and are left out here too.
    """
    items = getattr(dl, "items", None)
    if items is None:
        return None
    skipped = getattr(dl, "skipped", None) or {}
    kept = [(Path(p), int(lab)) for p, lab in items if str(p) not in skipped]
    if [lab for _, lab in kept] != targs.tolist():
        log.warning("the loader's items do not line up with its predictions: no file names")
        return None
    return [p for p, _ in kept]


def _images_from_loader(dl, idx: list[int], mean, std) -> torch.Tensor:
    """Items ``idx`` of ``dl``'s (normalised) batches, denormalised; keeps only those."""
    from snugfit.data.augment import denormalize

    where = {i: pos for pos, i in enumerate(idx)}
    found: list[torch.Tensor | None] = [None] * len(idx)
    start = 0
    for xb, _ in dl:
        if xb.ndim != 4:
            raise SnugfitError("plot_top_losses: the loader yields features, not images")
        for j in range(len(xb)):
            if start + j in where:
                x = xb[j : j + 1].float().cpu()
                found[where[start + j]] = denormalize(x, mean, std)[0]
        start += len(xb)
        if all(f is not None for f in found):
            break
    if any(f is None for f in found):
        raise SnugfitError("plot_top_losses: the loader yielded fewer items than predicted")
    return torch.stack(found)


def _save_or_return(fig, path):
    if path is None:
        return fig
    out = Path(path)
    fig.savefig(out, format="png", dpi=100)
    return out


def interpret(learn) -> dict:
    """The final model's interpretation for the run report, as `write_report`'s keyword
    arguments: the task's (``learn.task.name``) entry of `INTERPRETERS`."""
    return INTERPRETERS[learn.task.name](learn)


def _single_label(learn) -> dict:
    return {"interp": ClassificationInterpretation.from_learner(learn)}


def _multi_label(learn) -> dict:
    outs, targs = learn.get_preds()
    probs = learn.task.activation(outs.float())
    return {"per_label": per_label_report(probs, targs, learn.vocab, learn.threshold)}


def _segmentation(learn) -> dict:
    return {"seg": SegmentationInterpretation.from_learner(learn)}


# What the report shows of a final model, per task: a confusion matrix and top losses
# for single-label models, precision/recall/F1 per label for multi-label ones, Dice and
# IoU per class and the lowest-Dice images for segmentation.
INTERPRETERS = {
    "single_label": _single_label,
    "multi_label": _multi_label,
    "segmentation": _segmentation,
}
