"""The task seam: what single-label and multi-label classification do differently."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from snugfit.errors import SnugfitError
from snugfit.tasks import MultiLabel, SingleLabel, task_from_config
from snugfit.tasks.metrics import accuracy_multi, error_rate

VOCAB = ["cat", "dog", "owl"]


def test_single_label_targets_loss_and_decoding():
    task = SingleLabel()
    ys = [task.target(lab, 3) for lab in (2, 0, 1)]
    batch = task.stack_targets(ys)
    assert batch.dtype == torch.long and batch.tolist() == [2, 0, 1]
    assert task.empty_targets(3, torch.device("cpu")).shape == (0,)
    assert isinstance(task.loss(), nn.CrossEntropyLoss)
    probs = task.activation(torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 3.0]]))
    assert torch.allclose(probs.sum(-1), torch.ones(2))
    assert task.labels(probs, VOCAB) == ["cat", "owl"]
    label, top = task.csv_cells(probs[1], VOCAB)
    assert label == "owl" and top == pytest.approx(probs[1, 2].item())
    assert task.title(1, VOCAB) == "dog"
    assert task.metric("error_rate") is error_rate
    assert task.imagenet_head and task.config() == {"multi_label": False}


def test_multi_label_targets_loss_and_decoding():
    task = MultiLabel(threshold=0.4)
    t = task.target((0, 2), 3)
    assert t.dtype == np.float32 and t.tolist() == [1.0, 0.0, 1.0]
    batch = task.stack_targets([t, task.target((), 3)])
    assert batch.shape == (2, 3) and batch.dtype == torch.float32
    assert batch[1].sum() == 0  # an image with none of the classes
    assert task.empty_targets(3, torch.device("cpu")).shape == (0, 3)
    assert isinstance(task.loss(), nn.BCEWithLogitsLoss)
    probs = task.activation(torch.tensor([[2.0, -2.0, 0.0], [-3.0, -3.0, -3.0]]))
    assert task.labels(probs, VOCAB) == [["cat", "owl"], []]  # sigmoid(0) = 0.5 > 0.4
    assert task.csv_cells(probs[0], VOCAB)[0] == "cat owl"
    assert (
        task.title([1.0, 0.0, 1.0], VOCAB) == "cat;owl" and task.title([0, 0, 0], VOCAB) == "(none)"
    )
    assert task.metric("accuracy_multi") is accuracy_multi
    with pytest.raises(SnugfitError, match="'accuracy' needs single-label data"):
        task.metric("accuracy")
    assert not task.imagenet_head
    assert task.with_threshold(0.7).threshold == 0.7 and task.threshold == 0.4  # not edited


def test_a_saved_task_comes_back():
    for task in (SingleLabel(), MultiLabel(0.3)):
        back = task_from_config(json.loads(json.dumps(task.config())))
        assert type(back) is type(task) and back.config() == task.config()
    assert isinstance(task_from_config({}), SingleLabel)  # files from before multi-label
    with pytest.raises(SnugfitError, match="unknown metric 'f2'"):
        SingleLabel().metric("f2")
