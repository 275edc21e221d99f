import io
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from rich.console import Console
from torch import nn

from snugfit import ImageDataLoaders, Learner, vision_learner
from snugfit.callbacks import EVENTS, Callback
from snugfit.errors import SnugfitError
from snugfit.models import create_model
from snugfit.train.schedules import one_cycle


def fake_dls(n_batches=3, bs=8, size=32, n_classes=3, seed=0):
    """Fixed random batches on the CPU: enough for the loop, no image decoding."""
    g = torch.Generator().manual_seed(seed)
    batches = [
        (
            torch.randn(bs, 3, size, size, generator=g),
            torch.randint(0, n_classes, (bs,), generator=g),
        )
        for _ in range(n_batches)
    ]
    return SimpleNamespace(
        train=batches,
        bs=bs,
        valid=batches[:1],
        device=torch.device("cpu"),
        vocab=[f"c{i}" for i in range(n_classes)],
        c=n_classes,
        size=size,
        crop_pct=0.875,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    )


def quiet():
    return Console(file=io.StringIO(), force_terminal=False, width=120)


def make_learner(arch="test_resnet", dls=None, precision="fp32", **kw):
    torch.manual_seed(0)
    dls = dls or fake_dls()
    model = create_model(arch, dls.c, pretrained=False)
    return Learner(
        dls, model, metrics=["accuracy", "error_rate"], console=quiet(), precision=precision, **kw
    )


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_freeze_trains_only_the_head_and_keeps_frozen_bn_stats():
    learn = make_learner()
    learn.freeze()
    head = {id(p) for _, p in learn.groups[-1]}
    for name, p in learn.model.named_parameters():
        assert p.requires_grad == (id(p) in head), name
    before = snapshot(learn.model)
    learn.fit(1, lr=1e-2)
    after = snapshot(learn.model)
    head_names = {n for n, _ in learn.groups[-1]}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # only the head's weights moved: frozen BN layers kept their running statistics
    assert changed and changed <= head_names | {"fc.weight", "fc.bias"}
    assert not any("running_mean" in k for k in changed)


def test_freeze_to_and_unfreeze():
    learn = make_learner(bn_freeze_below=0)
    n = len(learn.groups)
    learn.freeze_to(2)
    trains = [all(p.requires_grad for _, p in g) for g in learn.groups]
    assert trains == [False, False] + [True] * (n - 2)
    learn.train_mode()
    frozen_bn = [m for m in learn.model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert any(not m.training for m in frozen_bn) and any(m.training for m in frozen_bn)
    learn.unfreeze()
    assert all(p.requires_grad for p in learn.model.parameters())
    with pytest.raises(SnugfitError, match="freeze_to"):
        learn.freeze_to(n)


def test_unfrozen_body_gets_gradients():
    learn = make_learner()
    learn.unfreeze()
    before = snapshot(learn.model)
    learn.fit(1, lr=1e-3)
    after = snapshot(learn.model)
    first = learn.groups[0][0][0]
    assert not torch.equal(before[first], after[first])


def test_discriminative_lrs_per_group_in_one_cycle():
    learn = make_learner()
    learn.unfreeze()
    n = len(learn.groups)
    learn.fit_one_cycle(2, lr_max=slice(1e-5, 1e-3), pct_start=0.5)
    lrs = learn.recorder.lrs  # per batch, per group
    peak = max(range(len(lrs)), key=lambda i: lrs[i][-1])
    expected = [1e-5 * (100 ** (i / (n - 1))) for i in range(n)]
    assert lrs[peak] == pytest.approx(expected, rel=1e-2)
    # the optimizer really used them: each torch param group follows its layer group
    for g in learn.opt.param_groups:
        assert g["lr"] == pytest.approx(lrs[-1][g["layer"]])
    assert lrs[0][-1] == pytest.approx(1e-3 / 25, rel=1e-6)


def test_fine_tune_follows_fastai_phases():
    learn = make_learner()
    learn.fine_tune(1, base_lr=2e-3, freeze_epochs=1, lr_mult=100)
    lrs = learn.recorder.lrs
    n = len(learn.dls.train)
    frozen, unfrozen = lrs[:n], lrs[n:]
    # frozen: one-cycle up to base_lr with pct_start=0.99; head at base_lr, body at /10
    for i, lr in enumerate(frozen):
        assert lr[-1] == pytest.approx(one_cycle(i / n, 2e-3, pct_start=0.99))
        assert lr[0] == pytest.approx(one_cycle(i / n, 2e-4, pct_start=0.99))
    # unfrozen: base_lr halved, spread from base_lr/2/lr_mult to base_lr/2, div=5
    for i, lr in enumerate(unfrozen):
        assert lr[-1] == pytest.approx(one_cycle(i / n, 1e-3, div=5, pct_start=0.3))
        assert lr[0] == pytest.approx(one_cycle(i / n, 1e-5, div=5, pct_start=0.3))
    assert all(p.requires_grad for p in learn.model.parameters())
    assert len(learn.recorder.rows) == 2


def test_micro_batches_give_the_full_batch_gradient():
    # no BatchNorm in a ViT: micro-batching must not change the math
    results = []
    for micro_bs in (None, 3, 2):
        learn = make_learner("test_vit", micro_bs=micro_bs)
        learn.unfreeze()
        learn.fit(1, lr=1e-3)
        results.append(snapshot(learn.model))
    for other in results[1:]:
        for k in results[0]:
            assert torch.allclose(results[0][k], other[k], atol=1e-5), k


def test_table_is_printed_without_a_terminal():
    learn = make_learner()
    learn.fit(2, lr=1e-3)
    text = learn.cbs[1].console.file.getvalue().splitlines()
    assert text[0].split() == [
        "epoch",
        "train_loss",
        "valid_loss",
        "accuracy",
        "error_rate",
        "time",
    ]
    assert [line.split()[0] for line in text[1:]] == ["0", "1"]
    row = learn.recorder.rows[-1]
    assert row["accuracy"] == pytest.approx(1 - row["error_rate"])
    assert float(text[2].split()[2]) == pytest.approx(row["valid_loss"], abs=1e-6)


def test_events_fire_in_order():
    seen = []

    class Spy(Callback):
        def __getattr__(self, name):
            return lambda learn: seen.append(name)

    learn = make_learner(dls=fake_dls(n_batches=1))
    learn.fit(1, cbs=[Spy()])
    assert seen == list(EVENTS)  # the order documented in snugfit.callbacks
    assert EVENTS[0] == "before_fit" and EVENTS[-1] == "after_fit"


def test_stop_training_ends_after_the_epoch():
    class StopAtOne(Callback):
        def after_epoch(self, learn):
            learn.stop_training = learn.epoch == 1

    learn = make_learner()
    learn.fit(5, cbs=[StopAtOne()])
    assert [r["epoch"] for r in learn.recorder.rows] == [0, 1]


def test_recorder_csv_and_plots(tmp_path):
    learn = make_learner()
    learn.recorder.csv_path = tmp_path / "metrics.csv"
    learn.fit(2, lr=1e-3)
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0] == "epoch,train_loss,valid_loss,accuracy,error_rate,time,ooms"
    assert len(lines) == 3
    assert len(learn.recorder.losses) == 2 * len(learn.dls.train)
    for f in (
        learn.recorder.plot_loss(tmp_path / "loss.png"),
        learn.recorder.plot_lr(tmp_path / "lr.png"),
    ):
        assert f.stat().st_size > 1000 and f.read_bytes()[:4] == b"\x89PNG"


def test_bad_arguments():
    learn = make_learner()
    with pytest.raises(SnugfitError, match="n_epoch"):
        learn.fit(0)
    with pytest.raises(SnugfitError, match="metrics: unknown metric 'f2'"):
        Learner(fake_dls(), nn.Linear(2, 2), metrics=["f2"])


def test_channels_last_for_cnns_only_and_same_outputs():
    cnn = make_learner("test_efficientnet")
    vit = make_learner("test_vit")
    assert cnn.channels_last and not vit.channels_last
    w = cnn.model.conv_stem.weight
    assert w.is_contiguous(memory_format=torch.channels_last)
    plain = make_learner("test_efficientnet", channels_last=False)
    plain.model.load_state_dict(cnn.model.state_dict())
    a, _ = cnn.get_preds()
    b, _ = plain.get_preds()
    assert torch.allclose(a, b, atol=1e-5)


def test_small_micro_batches_freeze_batchnorm_with_one_log_line(caplog):
    # batches of 8 < 16: BN statistics of a few samples would make micro-batches
    # differ from one batch, so BN layers keep their running statistics
    learn = make_learner()
    learn.unfreeze()
    before = snapshot(learn.model)
    with caplog.at_level("INFO", logger="snugfit"):
        learn.fit(2, lr=1e-3)
    notes = [r for r in caplog.records if "bn_freeze_below" in r.getMessage()]
    assert len(notes) == 1 and "micro-batch 8 < bn_freeze_below=16" in notes[0].getMessage()
    after = snapshot(learn.model)
    assert all(torch.equal(before[k], after[k]) for k in before if "running_" in k)
    # opting out keeps BN training: running statistics move
    learn = make_learner(bn_freeze_below=0)
    learn.unfreeze()
    before = snapshot(learn.model)
    learn.fit(1, lr=1e-3)
    after = snapshot(learn.model)
    assert any(not torch.equal(before[k], after[k]) for k in before if "running_mean" in k)


def test_accumulate_sets_micro_batches():
    learn = make_learner("test_vit", accumulate=3)
    assert learn.memory.micro(8) == 3
    learn = make_learner("test_vit", micro_bs=5)
    assert learn.memory.micro(8) == 5 and learn.memory.micro(4) == 4
    with pytest.raises(SnugfitError, match="micro_bs: expected a positive integer"):
        make_learner("test_vit", micro_bs=0)


def test_plan_chooses_and_is_redone_when_memory_moves():
    learn = make_learner(precision="auto", memory_budget="100MB")
    learn.freeze()
    learn.fit(1)
    frozen_plan = learn.memory_plan
    assert frozen_plan is not None and frozen_plan.frozen_to == len(learn.groups) - 1
    assert learn.micro_bs == frozen_plan.chosen.micro_bs
    learn.fit(1)
    assert learn.memory_plan is frozen_plan  # nothing moved: no new plan
    learn.unfreeze()
    learn.fit(1)
    assert learn.memory_plan is not frozen_plan and learn.memory_plan.frozen_to == 0
    # unfreezing adds gradients and optimizer state: the prediction grows
    assert learn.memory_plan.chosen.peak > frozen_plan.chosen.peak
    text = learn.console.file.getvalue()
    assert sum(line.startswith("plan: ") for line in text.splitlines()) == 2


def test_plan_that_fits_nothing_says_so():
    learn = make_learner()
    p = learn.plan("1MB")
    assert p.chosen is None and "nothing fits" in p.summary().lower()
    with pytest.raises(SnugfitError, match="budget: cannot read 'lots'"):
        learn.plan("lots")


@pytest.mark.slow
def test_compile_trains_with_unchanged_keys():
    plain = make_learner("test_vit")
    compiled = make_learner("test_vit", compile=True)
    assert list(compiled.model.state_dict()) == list(plain.model.state_dict())
    for learn in (plain, compiled):
        learn.unfreeze()
        learn.fit(1, lr=1e-3)
    a, b = snapshot(plain.model), snapshot(compiled.model)
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)


def test_no_host_sync_per_batch(monkeypatch):
    # Reading a tensor's value on the host (.item(), .tolist(), bool(), float()) waits
    # for the device. Count the reads snugfit's own code makes: they must not grow
    # with the number of batches. (torch's single-tensor AdamW reads its CPU step
    # counters, which never wait for a device; those are not snugfit's.)
    import snugfit

    package = str(Path(snugfit.__file__).parent)

    def count_reads(n_batches):
        learn = make_learner(dls=fake_dls(n_batches=n_batches))
        learn.unfreeze()
        reads = {"n": 0}
        for name in ("item", "tolist", "__bool__", "__float__"):
            original = getattr(torch.Tensor, name)

            def counted(self, *a, _original=original, **kw):
                caller = sys._getframe(1).f_code.co_filename
                reads["n"] += caller.startswith(package)
                return _original(self, *a, **kw)

            monkeypatch.setattr(torch.Tensor, name, counted)
        learn.fit(1, lr=1e-3)
        monkeypatch.undo()
        return reads["n"]

    few, many = count_reads(2), count_reads(6)
    assert few == many and few > 0  # the per-epoch reads are seen, none per batch


def test_progressive_resize_schedule_and_application():
    from snugfit.callbacks.progressive import ProgressiveResize, size_at, size_steps

    assert [size_at(e, 6, [128, 176, 224]) for e in range(6)] == [128, 128, 176, 176, 224, 224]
    assert [size_at(e, 3, [128, 224]) for e in range(3)] == [128, 128, 224]
    assert size_steps(128, 224, 5) == [128, 160, 176, 192, 224]
    assert size_steps(128, 224, 10) == [128, 144, 160, 160, 176, 192, 192, 208, 224, 224]
    seen = []

    class Spy(Callback):
        order = 0

        def before_epoch(self, learn):
            seen.append(learn.dls.size)

    dls = fake_dls()
    dls.set_size = lambda s: setattr(dls, "size", s)
    learn = make_learner(dls=dls, memory_budget="1GB")
    learn.fit_one_cycle(4, 1e-3, cbs=[ProgressiveResize([16, 32]), Spy()])
    assert seen == [16, 16, 32, 32]
    # one plan per size: the memory plan is redone when the size changes
    assert learn.memory_plan.size == 32
    # the LR schedule ran on across the change: one one-cycle over all 4 epochs
    assert learn.recorder.lrs[-1][-1] < learn.recorder.lrs[0][-1]
    with pytest.raises(SnugfitError, match="sizes"):
        ProgressiveResize([0])
    with pytest.raises(SnugfitError, match="give sizes"):
        ProgressiveResize(start=128)


def test_a_given_crop_pct_is_kept_and_the_models_is_the_default(image_folder):
    fast = {"bs": 8, "size": 32, "num_workers": 0}
    given = ImageDataLoaders.from_folder(image_folder, crop_pct=1.0, **fast)
    learn = vision_learner(given, "test_efficientnet", pretrained=False)
    assert learn.dls.crop_pct == 1.0 and learn.preprocessing.crop_pct == 1.0
    default = ImageDataLoaders.from_folder(image_folder, **fast)
    assert default.crop_pct == 0.875  # until a model says otherwise
    learn = vision_learner(default, "test_efficientnet", pretrained=False)
    assert learn.dls.crop_pct == learn.preprocessing.crop_pct == 0.95  # the model's
