"""Evaluation that streams batch by batch for every task (and, next, the segmentation
task)."""

import io
from types import SimpleNamespace

import pytest
import torch
from rich.console import Console
from torch import nn

from snugfit import Learner
from snugfit.errors import SnugfitError
from snugfit.tasks import ConcatEvaluator, MultiLabel, SingleLabel
from snugfit.tasks.metrics import accuracy, error_rate


@pytest.mark.parametrize("task", [SingleLabel(), MultiLabel(0.4)])
def test_classification_sums_of_two_ranks_equal_one_process(task):
    g = torch.Generator().manual_seed(1)
    outs = torch.randn(9, 3, generator=g)
    if task.multi_label:
        targs, names = (
            (torch.rand(9, 3, generator=g) > 0.5).float(),
            ("accuracy_multi", "f1_samples"),
        )
    else:
        targs, names = torch.randint(0, 3, (9,), generator=g), ("accuracy", "error_rate")
    metrics = [task.metric(m) for m in names]
    whole = task.evaluator(task.loss(), metrics, ["x", "y", "z"])
    whole.update(outs, targs)
    ranks = [task.evaluator(task.loss(), metrics, ["x", "y", "z"]) for _ in range(3)]
    ranks[0].update(outs[:4], targs[:4])
    ranks[1].update(outs[4:], targs[4:])  # ranks[2]: an empty shard
    ranks[2].load_sums(sum(r.sums() for r in ranks))
    loss, values = ranks[2].result()
    assert ranks[2].n == 9 and loss == pytest.approx(whole.result()[0], rel=1e-6)
    assert values == pytest.approx(whole.result()[1], rel=1e-6)


class TinyClassifier(nn.Module):
    def __init__(self, n_out=3):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.head = nn.Linear(4, n_out)

    def get_classifier(self):
        return self.head

    def forward(self, x):
        return self.head(self.body(x))


def fake_dls(task, make_target, n_batches=3, bs=4, size=8, vocab=("x", "y", "z")):
    g = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(bs, 3, size, size, generator=g), make_target(bs, g)) for _ in range(n_batches)
    ]
    return SimpleNamespace(
        train=batches, valid=batches[1:], bs=bs, device=torch.device("cpu"), task=task,
        vocab=list(vocab), c=len(vocab), size=size, crop_pct=1.0, mean=(0.5,) * 3, std=(0.5,) * 3,
    )  # fmt: skip


def learner(dls, model, metrics):
    torch.manual_seed(0)
    quiet = Console(file=io.StringIO(), force_terminal=False)
    return Learner(dls, model, metrics=metrics, precision="fp32", console=quiet)


def _class_indices(bs, g):
    return torch.randint(0, 3, (bs,), generator=g)


def _multi_hot(bs, g):
    return (torch.rand(bs, 3, generator=g) > 0.5).float()


@pytest.mark.parametrize(
    "task, make_target, names",
    [
        (SingleLabel(), _class_indices, ["accuracy", "error_rate"]),
        (MultiLabel(), _multi_hot, ["accuracy_multi", "f1_samples"]),
    ],
)
def test_classification_evaluation_gives_the_numbers_of_the_whole_concatenation(
    task, make_target, names
):
    learn = learner(fake_dls(task, make_target), TinyClassifier(), names)
    loss, metrics = learn.evaluate(learn.dls.valid)
    preds, targs = learn.get_preds(learn.dls.valid)  # what evaluate computed on before
    assert loss == learn.loss_func(preds, targs).item()  # bit for bit
    assert metrics == {n: m(preds, targs).item() for n, m in zip(names, learn.metrics, strict=True)}


def test_an_empty_validation_set_is_one_clear_line():
    learn = learner(fake_dls(SingleLabel(), _class_indices), TinyClassifier(), ["accuracy"])
    with pytest.raises(SnugfitError, match="yielded no images"):
        learn.evaluate([])


def test_concat_evaluator_measures_with_the_metrics_it_is_given():
    ev = ConcatEvaluator(nn.CrossEntropyLoss(), [accuracy, error_rate])
    ev.update(torch.tensor([[2.0, 0.0]]), torch.tensor([0]))
    ev.update(torch.tensor([[0.0, 2.0]]), torch.tensor([0]))
    loss, metrics = ev.result()
    assert metrics == {"accuracy": 0.5, "error_rate": 0.5} and ev.n == 2
    logits, targets = torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 0])
    assert loss == nn.CrossEntropyLoss()(logits, targets).item()
