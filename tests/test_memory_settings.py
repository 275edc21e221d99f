"""The memory settings: one frozen value, changed only by Learner.set_memory, which says why."""

from dataclasses import FrozenInstanceError

import pytest

from snugfit.errors import SnugfitError
from snugfit.memory.settings import MemorySettings
from test_learner import fake_dls, make_learner
from test_oom import inject_oom


def memory_events(learn):
    return [(e["why"], {k: v for k, v in e.items() if k not in ("time", "kind", "why")})
            for e in learn.events.of("memory")]  # fmt: skip


def test_settings_are_a_checked_frozen_value():
    s = MemorySettings(micro_bs=4, precision="bf16")
    assert s.micro(10) == 4 and s.micro(3) == 3 and MemorySettings(accumulate=4).micro(10) == 3
    with pytest.raises(FrozenInstanceError):
        s.micro_bs = 2
    with pytest.raises(SnugfitError, match="precision: unknown 'auto'"):
        s.replace(precision="auto")  # resolved before it gets here
    with pytest.raises(SnugfitError, match="micro_bs: expected a positive integer"):
        s.replace(micro_bs=0)
    assert s.levers() == {"micro_bs": 4, "checkpointing": False, "precision": "bf16"}


def test_every_change_goes_through_set_memory_and_says_why():
    learn = make_learner("test_vit", dls=fake_dls(n_batches=2, bs=8), memory_budget="1GB")
    with pytest.raises(AttributeError):
        learn.precision = "bf16"  # a view of learn.memory, not a second copy
    learn.to_bf16()
    assert learn.memory.precision == learn.precision == "bf16" and learn.scaler is None
    learn.to_fp16()
    assert learn.scaler is not None  # fp16 brings its GradScaler
    learn.to_fp32()
    learn.fit(1, lr=1e-3)  # the budget plans the first fit
    inject_oom(learn.model, lambda x: learn.model.training and len(x) > 2)
    learn.fit(1, lr=1e-3)
    whys = [why for why, _ in memory_events(learn)]
    assert whys[:3] == ["asked for"] * 3
    assert "plan" in whys and whys.count("out of memory") == 2  # 8 -> 4 -> 2
    assert memory_events(learn)[-1] == ("out of memory", {"micro_bs": 2})
    assert learn.micro_bs == 2 and [e["to"]["micro_bs"] for e in learn.oom_events] == [4, 2]
    n = len(learn.events.of("memory"))
    learn.set_memory("asked for", micro_bs=2)  # no change: nothing to record
    assert len(learn.events.of("memory")) == n


def test_checkpointing_stays_off_for_a_model_that_cannot():
    import torch
    from torch import nn

    from snugfit import Learner

    class Flat(nn.Module):  # no stages to checkpoint
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3 * 32 * 32, 3)

        def forward(self, x):
            return self.fc(x.flatten(1))

    torch.manual_seed(0)
    learn = Learner(fake_dls(), Flat(), precision="fp32", checkpointing=True)
    assert learn.checkpointing is False and not learn.events.of("memory")
