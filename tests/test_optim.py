import pytest
import torch
from torch import nn

from snugfit.errors import SnugfitError
from snugfit.train.optim import (
    decoupled_weight_decay,
    make_optimizer,
    param_groups,
    resolve_lrs,
    set_hypers,
)


def test_resolve_lrs_forms():
    assert resolve_lrs(1e-3, 3) == [1e-3] * 3
    assert resolve_lrs(slice(1e-2), 3) == pytest.approx([1e-3, 1e-3, 1e-2])
    assert resolve_lrs(slice(1e-6, 1e-4), 3) == pytest.approx([1e-6, 1e-5, 1e-4])
    assert resolve_lrs([1, 2, 3], 3) == [1.0, 2.0, 3.0]


def test_resolve_lrs_errors_name_the_argument():
    with pytest.raises(SnugfitError, match="lr: got 2 learning rates for 3 layer groups"):
        resolve_lrs([1e-3, 1e-2], 3)
    with pytest.raises(SnugfitError, match="lr:"):
        resolve_lrs(-1.0, 2)
    with pytest.raises(SnugfitError, match="lr:"):
        resolve_lrs(slice(0, 1e-3), 2)


def _named(model):
    return [
        list(model[0].named_parameters(prefix="0")),
        list(model[1].named_parameters(prefix="1")),
    ]


def test_param_groups_split_decay_and_no_decay():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    groups = param_groups(_named(model), no_decay={"0.bias", "1.weight", "1.bias"}, wd=0.1)
    # layer 0: decayed weight + undecayed bias; layer 1: only undecayed norm params
    assert [(g["layer"], g["weight_decay"], len(g["params"])) for g in groups] == [
        (0, 0.1, 1),
        (0, 0.0, 1),
        (1, 0.0, 2),
    ]
    assert groups[0]["params"][0] is model[0].weight


def test_set_hypers_per_layer_group_and_momentum():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    opt = make_optimizer("adamw", param_groups(_named(model), {"0.bias", "1.bias"}, 0.01))
    set_hypers(opt, [1e-4, 1e-2], mom=0.85)
    assert [g["lr"] for g in opt.param_groups] == [1e-4, 1e-4, 1e-2, 1e-2]
    assert all(g["betas"] == (0.85, 0.99) for g in opt.param_groups)
    sgd = make_optimizer("sgd", param_groups(_named(model), set(), 0.0))
    set_hypers(sgd, [0.1, 0.2], mom=0.9)
    assert [g["momentum"] for g in sgd.param_groups] == [0.9, 0.9]


def test_sgd_weight_decay_is_decoupled():
    p = nn.Parameter(torch.ones(3))
    opt = make_optimizer("sgd", [{"params": [p], "weight_decay": 0.5, "layer": 0}], lr=0.1)
    p.grad = torch.zeros(3)
    decoupled_weight_decay(opt)
    opt.step()
    # zero gradient: only the decay acts, p *= 1 - lr * wd
    assert torch.allclose(p.detach(), torch.full((3,), 1 - 0.1 * 0.5))
    assert opt.param_groups[0]["weight_decay"] == 0.0


def test_unknown_optimizer():
    with pytest.raises(SnugfitError, match="opt: unknown optimizer 'lamb'"):
        make_optimizer("lamb", [{"params": [nn.Parameter(torch.ones(1))], "layer": 0}])
