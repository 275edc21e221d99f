"""A Learner on a segmentation model: training, freezing, planning, saving, resuming."""

import io
from types import SimpleNamespace

import pytest
import torch
from rich.console import Console

from snugfit import Learner
from snugfit.models import create_segmentation_model
from snugfit.tasks import Segmentation
from snugfit.train.factory import load_learner

CODES = ["background", "blob"]


def blob_batches(n_batches=3, bs=4, hw=(32, 48), seed=0):
    """Images whose mask is where the red channel is high (a learnable rule)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        x = torch.randn(bs, 3, *hw, generator=g)
        y = (x[:, 0] > 0.5).long()
        y[:, 0, :] = 255  # a void row
        out.append((x, y))
    return out


def seg_dls(**kw):
    batches = blob_batches(**kw)
    return SimpleNamespace(
        train=batches, valid=batches[:1], bs=batches[0][0].shape[0], device=torch.device("cpu"),
        vocab=CODES, c=2, size=tuple(batches[0][0].shape[-2:]), crop_pct=1.0,
        mean=(0.5,) * 3, std=(0.5,) * 3, task=Segmentation(),
    )  # fmt: skip


def seg_learner(decoder="unet", **kw):
    torch.manual_seed(0)
    model = create_segmentation_model("resnet18", 2, decoder=decoder, pretrained=False)
    quiet = Console(file=io.StringIO())
    return Learner(seg_dls(), model, metrics=["dice", "iou"], arch="resnet18",
                   precision="fp32", console=quiet, **kw)  # fmt: skip


def test_it_trains_and_the_encoder_freezes():
    learn = seg_learner()
    learn.freeze()
    names = {n for n, p in learn.model.named_parameters() if p.requires_grad}
    assert names and all(not n.startswith("encoder.") for n in names)
    assert not learn.can_precompute  # the decoder needs the encoder's skip features
    before = learn.validate()
    learn.unfreeze()
    learn.fit_one_cycle(4, 1e-3)
    after = learn.validate()
    assert after["valid_loss"] < before["valid_loss"] and 0 <= after["dice"] <= 1
    rows = learn.recorder.rows
    assert {"dice", "iou"} <= rows[-1].keys() and len(rows) == 4


def test_plan_checkpointing_and_micro_batches_keep_the_math():
    a, b = seg_learner(), seg_learner(micro_bs=2, checkpointing=True, bn_freeze_below=0)
    for learn in (a, b):
        learn.unfreeze()
        learn.model.eval()  # no BN statistics: micro-batches are then exact
    xb, yb = a.dls.train[0]
    la, lb = a.train_step(xb, yb), b.train_step(xb, yb)
    assert torch.allclose(la, lb, atol=1e-5) and b.checkpointing
    p = seg_learner(memory_budget="1GB").plan(bs=4, size=(32, 48))
    assert p.chosen is not None and p.size == (32, 48)


def test_save_load_predicts_the_same_masks(tmp_path):
    learn = seg_learner()
    learn.fit(1, 1e-3)
    folder = learn.save(tmp_path / "m")
    loaded = load_learner(folder)
    assert loaded.task.name == "segmentation" and loaded.model_spec == {
        "arch": "resnet18", "decoder": "unet",
    }  # fmt: skip
    x = learn.dls.valid[0][0]
    learn.model.eval(), loaded.model.eval()
    with torch.no_grad():
        assert torch.allclose(loaded.eval_outputs(x), learn.eval_outputs(x), atol=1e-5)


def test_interpretation_and_report_sections(tmp_path):
    from snugfit.app.report import write_report
    from snugfit.infer.interpret import interpret
    from snugfit.infer.interpret_seg import image_dice

    learn = seg_learner()
    found = interpret(learn)
    seg = found["seg"]
    y = learn.dls.valid[0][1]
    assert seg.confusion.sum() == (y != 255).sum()  # every non-void pixel, once
    assert len(seg.worst) == 4 and seg.worst[0].dice <= seg.worst[-1].dice
    assert seg.worst[0].image.shape[0] == 3 and seg.worst[0].truth.shape == seg.worst[0].pred.shape
    # one image's Dice by hand: background left out, a class in neither is not counted
    pred = torch.tensor([[0, 1], [1, 1]])
    truth = torch.tensor([[0, 1], [0, 255]])
    assert image_dice(pred, truth, 3) == 2 * 1 / (2 * 1 + 1 + 0)
    page = write_report(tmp_path, status="completed", **found).read_text()
    assert "lowest Dice" in page and page.count('data-name="thumb"') == 3 * 4
    assert '<td class="l">blob</td>' in page


def test_a_large_input_is_probed_smaller_and_scaled_by_area(monkeypatch):
    import snugfit.memory.probe as probe

    model = create_segmentation_model("resnet18", 3, pretrained=False)
    full = probe.measure(model, (128, 192))
    monkeypatch.setattr(probe, "PROBE_PIXELS", 64 * 96)
    scaled = probe.profile_activations(model, (128, 192), room=0)  # no room: scale
    assert scaled.probed_at == (64, 96)
    assert abs(scaled.per_sample / full.per_sample - 1) < 0.02
    again = probe.profile_activations(model, (128, 192), room=2**40)  # room: measure
    assert again.probed_at is None and again.per_sample == full.per_sample


def test_plan_command_on_a_segmentation_folder(tmp_path, capsys):
    from fixtures import make_segmentation_folder
    from test_cli import run_cli

    root = make_segmentation_folder(tmp_path / "seg", n=4)
    code, out, err = run_cli(capsys, "plan", str(root), "--arch", "resnet18", "--size",
                             "64x96", "--crop", "32", "--bs", "4", "--gpu-mem", "2GB")  # fmt: skip
    assert code == 0, err
    assert out.count("at 32 px on cuda") == 2 and "decoder" not in err


def test_the_decoders_batchnorm_trains_at_small_micro_batches():
    from torch import nn

    learn = seg_learner(micro_bs=2)  # below bn_freeze_below=16
    learn.unfreeze()
    learn.train_mode()
    bns = {n: m for n, m in learn.model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    enc = [m.training for n, m in bns.items() if n.startswith("encoder.")]
    dec = [m.training for n, m in bns.items() if n.startswith("decoder.")]
    assert enc and dec and not any(enc) and all(dec)  # no statistics to keep in the decoder


def test_the_plan_at_1400x2100(monkeypatch):
    """The satellite scenario's question, planned on the CPU for an 11 GB card."""
    import snugfit.memory.probe as probe
    from snugfit.memory import make_plan, parse_bytes

    monkeypatch.setattr(probe, "free_bytes", lambda device: 0)  # measure small, scale
    model = create_segmentation_model("resnet18", 5, pretrained=False)
    plan = make_plan(model, bs=8, size=(1400, 2100), budget=parse_bytes("11GB"),
                     precisions=("fp32", "bf16"))  # fmt: skip
    assert plan.probed_at == (416, 640) and plan.to_dict()["size"] == [1400, 2100]
    peaks = {(c.precision, c.checkpointing, c.micro_bs): c.peak for c in plan.candidates}
    # more images, more memory; checkpointing and 16-bit each save some
    assert peaks["fp32", False, 8] > peaks["fp32", False, 4] > peaks["fp32", False, 1]
    assert peaks["fp32", True, 4] < peaks["fp32", False, 4] > peaks["bf16", False, 4]
    assert plan.chosen is not None and plan.chosen.fits and not peaks["fp32", False, 8] < 11e9


def test_lr_find_and_sgdr_on_a_segmentation_model():
    learn = seg_learner()
    learn.unfreeze()
    found = learn.lr_find(num_it=6)
    assert len(found.lrs) >= 2 and found.suggested > 0
    learn.fit_sgdr(2, 1, lr_max=slice(1e-4, 1e-3))  # cycles of 1 and 2 epochs
    lrs = [row[-1] for row in learn.recorder.lrs]
    assert len(learn.recorder.rows) == 3 and lrs[0] < max(lrs)  # a warm-up, then the top


def test_auto_fit_keeps_the_size_of_a_segmentation_model():
    from snugfit.train.recipes import _head_size

    learn = seg_learner()
    # the decoder trains in the head phases too: no FixRes enlargement for it
    assert _head_size(learn, 1.3) == learn.dls.size


def test_auto_fit_always_trains_a_segmentation_models_body(monkeypatch):
    from snugfit.train.recipes import _decide_unfreeze

    learn = seg_learner()
    monkeypatch.setattr(learn, "pretraining_shift", lambda: pytest.fail("measured"))
    # even with a limit no shift reaches: the deep features are not all a decoder reads
    assert _decide_unfreeze(learn, "auto", 1e9, learn.dls.size) is True
    event = learn.events.of("unfreeze")[-1]
    assert event["decision"] is True and event["shift"] is None
    assert "a decoder reads every level of the body" in learn.console.file.getvalue()


def test_auto_fit_trains_a_decoder_with_its_encoder_for_8_epochs_by_default():
    from test_callbacks import Script

    learn = seg_learner()
    rising = Script("valid_loss", [float(i) for i in range(20)])  # only the first improves
    learn.auto_fit(cbs=[rising])
    phases = [e["name"] for e in learn.events.of("phase")]
    # no head phase on the frozen encoder, and so no lr_find sweep for one
    assert phases == ["unfrozen, one learning rate"]
    assert [e["why"] for e in learn.events.of("lr")] == ["rule"]
    # every unfrozen epoch runs (no early stopping), at one learning rate for all
    assert len(learn.recorder.rows) == 8
    last = learn.recorder.lrs[-1]
    assert len(last) == len(learn.groups) > 1 and max(last) == pytest.approx(min(last))
    assert "the decoder is new" in learn.console.file.getvalue()


def test_auto_fit_of_a_segmentation_model_takes_given_epochs_and_patience():
    from test_callbacks import Script

    learn = seg_learner()
    rising = Script("valid_loss", [float(i) for i in range(20)])
    learn.auto_fit(3, head_aug_epochs=1, lr_find=False, patience=1, lr_mult=100, cbs=[rising])
    phases = [e["name"] for e in learn.events.of("phase")]
    assert phases[0] == "head with data augmentation" and phases[-1].startswith("unfrozen")
    # early stopping after the first unfrozen epoch that did not improve
    assert len(learn.recorder.rows) == 1 + 2
    first, last = learn.recorder.lrs[-1][0], learn.recorder.lrs[-1][-1]
    assert last / first == pytest.approx(100)
