from __future__ import annotations

import contextlib
import io

import pytest
import timm
import torch
from rich.console import Console
from torch import nn

from snugfit.errors import SnugfitError
from snugfit.memory import (
    ActivationProfile,
    activation_bytes,
    format_bytes,
    make_plan,
    micro_batches,
    parse_bytes,
    profile_activations,
    saved_tensor_bytes,
    static_bytes,
)
from snugfit.models import (
    checkpoint_units,
    create_segmentation_model,
    model_stages,
    set_grad_checkpointing,
)

MiB = 2**20


def bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def freeze_body(model: nn.Module) -> None:
    """Freeze everything but the classifier."""
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.get_classifier().parameters():
        p.requires_grad_(True)


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return timm.create_model("resnet18", pretrained=False, num_classes=10)


# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("8GB", 8 * 10**9),
        ("8 gb", 8 * 10**9),
        ("8GiB", 8 * 2**30),
        ("7500MB", 7500 * 10**6),
        ("512MiB", 512 * 2**20),
        ("1.5TB", 1.5 * 10**12),
        ("4096", 4096),
        (4096, 4096),
        (8e9, 8 * 10**9),
    ],
)
def test_parse_bytes_sizes(value, expected):
    assert parse_bytes(value) == expected


def test_parse_bytes_fractions_of_the_device():
    total = 16 * 2**30
    assert parse_bytes(0.5, total=total) == 8 * 2**30
    assert parse_bytes("0.25", total=total) == 4 * 2**30
    assert parse_bytes(1.0, total=total) == total
    with pytest.raises(SnugfitError, match=r"^budget: the fraction 0\.5 needs the device"):
        parse_bytes(0.5)


@pytest.mark.parametrize(
    "value", ["eight GB", "8XB", "8 G B", "", -1, 0, "0", True, None, "-2GB", "1.5", 1.5]
)
def test_parse_bytes_rejects_with_one_line(value):
    with pytest.raises(SnugfitError) as info:
        parse_bytes(value, total=2**30, name="max_mem")
    msg = str(info.value)
    assert msg == (
        f"max_mem: cannot read {value!r}; use e.g. 8GB, 8GiB, 7500MB or a fraction like 0.5 "
        "of the device"
    )
    assert "\n" not in msg


def test_format_bytes():
    assert format_bytes(1.23 * 2**30) == "1.23 GiB"
    assert format_bytes(512 * MiB) == "512.0 MiB"
    assert format_bytes(3 * 1024) == "3.0 KiB"
    assert format_bytes(12) == "12 B"


# --------------------------------------------------------------------------- counting


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))


def test_saved_bytes_of_a_hand_made_model():
    model, x = mlp(), torch.randn(4, 10)
    saved = saved_tensor_bytes(model, x)
    # Linear 1 saves its input x (for the weight's gradient; x needs none, so the weight
    # is not saved, and parameters are never counted); ReLU saves its output, which
    # Linear 2 saves again as its input: one storage.
    x_bytes, hidden_bytes = 4 * 10 * 4, 4 * 20 * 4
    assert saved.total == x_bytes + hidden_bytes
    # The fallback stages are the Sequential's children: bytes go to the first module
    # that saved them; inputs are what each child received.
    assert model_stages(model) == list(model)
    assert saved.per_stage == [x_bytes, hidden_bytes, 0]
    assert saved.stage_inputs == [x_bytes, hidden_bytes, hidden_bytes]


def test_frozen_first_layer_saves_nothing_for_it():
    model, x = mlp(), torch.randn(4, 10)
    model[0].requires_grad_(False)
    # Nothing before Linear 2 needs a gradient: only its input is saved.
    assert saved_tensor_bytes(model, x).total == 4 * 20 * 4


def test_probe_restores_modes_and_running_stats():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.ReLU())
    model.eval()
    model[1].train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    saved = saved_tensor_bytes(model, torch.randn(2, 3, 8, 8))
    assert saved.total > 0
    assert [m.training for m in model] == [False, True, False, False]
    assert not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_frozen_body_saves_only_the_classifier_input(resnet18):
    x = torch.randn(2, 3, 64, 64)
    full = saved_tensor_bytes(resnet18, x).total
    try:
        freeze_body(resnet18)
        frozen = saved_tensor_bytes(resnet18, x).total
        # The head is one Linear; it saves its pooled input: B x num_features floats.
        assert frozen == 2 * resnet18.num_features * 4
        for module in (resnet18.conv1, resnet18.bn1, resnet18.layer1, resnet18.layer2):
            module.requires_grad_(False)
        for module in (resnet18.layer3, resnet18.layer4, resnet18.fc):
            module.requires_grad_(True)
        partial = saved_tensor_bytes(resnet18, x).total
    finally:
        resnet18.requires_grad_(True)
    assert frozen < partial < full
    assert full > 3 * MiB


@pytest.mark.slow
def test_resnet50_frozen_vs_unfrozen_per_sample():
    model = timm.create_model("resnet50", pretrained=False)
    unfrozen = profile_activations(model, 224).per_sample
    freeze_body(model)
    frozen = profile_activations(model, 224).per_sample
    print(f"resnet50 @ 224 per sample: unfrozen {unfrozen / MiB:.1f} MiB, frozen {frozen} B")
    assert frozen == 2048 * 4
    assert unfrozen == pytest.approx(82 * MiB, rel=0.10)


# --------------------------------------------------------------------------- prediction


@pytest.mark.parametrize(
    ("arch", "size", "precision"),
    [
        ("resnet18", 64, "fp32"),
        ("efficientnet_b0", 96, "fp32"),
        ("efficientnet_b0", 96, "bf16"),
        ("vit_tiny_patch16_224", 224, "fp32"),
    ],
)
def test_profile_predicts_saved_bytes_at_micro_batch_8(arch, size, precision):
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=10)
    profile = profile_activations(model, size, precision=precision)
    autocast = bf16 if precision == "bf16" else contextlib.nullcontext
    measured = saved_tensor_bytes(model, torch.randn(8, 3, size, size), autocast=autocast).total
    assert activation_bytes(profile, 8) == pytest.approx(measured, rel=0.10)
    assert profile.precision == precision
    assert len(profile.stage_per_sample) == len(checkpoint_units(model))
    # Saved bytes inside the stages are part of the whole.
    assert 0 < sum(profile.stage_per_sample) <= profile.per_sample


def test_bf16_halves_the_per_sample_activations():
    torch.manual_seed(0)
    model = timm.create_model("efficientnet_b0", pretrained=False, num_classes=10)
    fp32 = profile_activations(model, 64)
    half = profile_activations(model, 64, precision="fp16")  # bf16 autocast on the CPU
    assert half.per_sample == pytest.approx(fp32.per_sample / 2, rel=0.15)
    # autocast keeps 16-bit copies of the weights for backward: a fixed cost.
    assert half.fixed > fp32.fixed


def test_profile_of_a_model_that_needs_two_samples():
    # BatchNorm1d in train mode refuses a batch of one: the probe falls back to 2 and 4.
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.BatchNorm1d(4),
        nn.Linear(4, 2),
    )
    profile = profile_activations(model, 8)
    measured = saved_tensor_bytes(model, torch.randn(8, 3, 8, 8)).total
    assert activation_bytes(profile, 8) == pytest.approx(measured, rel=0.01)


def test_profile_leaves_the_global_rng_alone():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.Dropout(0.5), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)
    )
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    profile_activations(model, 8)
    assert torch.equal(torch.rand(3), expected)


def test_activation_bytes_formula():
    profile = ActivationProfile(
        fixed=100.0,
        per_sample=1000.0,
        stage_per_sample=[300.0, 500.0],
        stage_input_per_sample=[20.0, 10.0],
    )
    assert activation_bytes(profile, 4) == 100 + 4 * 1000
    # Kept: outside the stages (200) + stage inputs (30); recomputed: the largest stage (500).
    assert activation_bytes(profile, 4, checkpointing=True) == 100 + 4 * (200 + 30 + 500)


# --------------------------------------------------------------------------- checkpointing


def test_timm_checkpointing_saves_less(resnet18):
    x = torch.randn(2, 3, 64, 64)
    before = saved_tensor_bytes(resnet18, x).total
    try:
        assert set_grad_checkpointing(resnet18) == "timm"
        # Non-reentrant checkpointing hides its blocks' tensors from the outer hooks;
        # they see what stays saved: each block's input and what lies outside the blocks.
        after = saved_tensor_bytes(resnet18, x).total
    finally:
        set_grad_checkpointing(resnet18, False)
    assert after < 0.6 * before
    assert saved_tensor_bytes(resnet18, x).total == before


def block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.ReLU(),
    )


@pytest.mark.parametrize(
    ("arch", "size", "n_units"),
    [("resnet18", 64, 8), ("efficientnet_b0", 64, 16), ("vit_tiny_patch16_224", 224, 12)],
)
def test_checkpointed_prediction_keeps_what_checkpointing_keeps(arch, size, n_units):
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=10)
    assert len(checkpoint_units(model)) == n_units  # timm checkpoints block by block
    profile = profile_activations(model, size)
    recomputed = max(profile.stage_per_sample)
    predicted_kept = activation_bytes(profile, 4, checkpointing=True) - 4 * recomputed
    assert set_grad_checkpointing(model) == "timm"
    # With checkpointing on, the outer hooks see what stays saved until backward.
    kept = saved_tensor_bytes(model, torch.randn(4, 3, size, size)).total
    assert predicted_kept == pytest.approx(kept, rel=0.10)
    assert kept < 0.6 * activation_bytes(profile, 4)


@pytest.mark.parametrize(
    ("arch", "decoder", "n_units"),
    [("resnet18", "unet", 8 + 5), ("resnet18", "fpn", 8 + 8), ("resnet18", "deeplabv3plus", 8 + 3)],
)
def test_checkpointed_prediction_for_segmentation_models(arch, decoder, n_units):
    torch.manual_seed(0)
    model = create_segmentation_model(arch, 3, decoder=decoder, pretrained=False)
    assert len(checkpoint_units(model)) == n_units  # encoder blocks, then decoder blocks
    profile = profile_activations(model, 64)
    recomputed = max(profile.stage_per_sample)
    predicted_kept = activation_bytes(profile, 4, checkpointing=True) - 4 * recomputed
    assert set_grad_checkpointing(model) == "generic"
    kept = saved_tensor_bytes(model, torch.randn(4, 3, 64, 64)).total
    print(f"{arch} {decoder}: kept {kept / MiB:.2f} MiB, predicted {predicted_kept / MiB:.2f} MiB")
    assert predicted_kept == pytest.approx(kept, rel=0.06)
    assert kept < 0.6 * activation_bytes(profile, 4)


def test_a_stage_output_saved_outside_counts_outside():
    # The ReLU saves its output; the convolution after the stage saves it again, so
    # checkpointing the stage would keep it: it is not the stage's to drop.
    stage = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    model = nn.Sequential(stage, nn.Conv2d(4, 2, 1))
    x = torch.randn(2, 3, 8, 8)
    saved = saved_tensor_bytes(model, x, stages=[stage])
    image, relu_out = 2 * 3 * 8 * 8 * 4, 2 * 4 * 8 * 8 * 4
    assert saved.total == image + relu_out
    assert saved.per_stage == [image]  # the convolution's input only
    assert saved.stage_inputs == [image]


def staged_model() -> nn.Sequential:
    """Stages of blocks, the shape generic checkpointing expects: it checkpoints each block."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Sequential(block(3, 8), block(8, 8)),
        nn.Sequential(block(8, 16, stride=2), block(16, 16)),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3)),
    )


def test_generic_checkpointing_matches_the_plain_model():
    plain, ckpt = staged_model(), staged_model()
    # Eval mode: BatchNorm uses fixed stats, so the recomputed forward is identical.
    plain.eval()
    ckpt.eval()
    keys = list(ckpt.state_dict())
    assert set_grad_checkpointing(ckpt) == "generic"
    assert list(ckpt.state_dict()) == keys
    assert all(type(s).__name__ == "_CheckpointedSequential" for s in ckpt)

    x = torch.randn(2, 3, 12, 12)
    out_plain, out_ckpt = plain(x), ckpt(x)
    torch.testing.assert_close(out_ckpt, out_plain)
    out_plain.square().sum().backward()
    out_ckpt.square().sum().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, msg=name)

    # What stays saved is each block's input (and the head's own saved tensors).
    kept = saved_tensor_bytes(ckpt, x)
    assert kept.total < saved_tensor_bytes(plain, x).total / 2
    block_inputs = 2 * 4 * (3 * 12 * 12 + 8 * 12 * 12 + 8 * 12 * 12 + 16 * 6 * 6)
    assert kept.per_stage[:2] == [2 * 4 * (3 + 8) * 12 * 12, 2 * 4 * (8 * 12 * 12 + 16 * 6 * 6)]
    assert sum(kept.per_stage[:2]) == block_inputs

    assert set_grad_checkpointing(ckpt, False) == "generic"
    assert all(type(s) is nn.Sequential for s in ckpt)


def test_generic_checkpointing_trains():
    model = staged_model()
    set_grad_checkpointing(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, y = torch.randn(4, 3, 12, 12), torch.tensor([0, 1, 2, 0])
    before = model[0][0][0].weight.detach().clone()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert not torch.equal(model[0][0][0].weight, before)


def test_checkpointing_none_without_stages():
    assert set_grad_checkpointing(nn.Linear(2, 2)) == "none"


# --------------------------------------------------------------------------- the plan


def test_micro_batches():
    assert micro_batches(32) == [32, 16, 8, 4, 2, 1]
    assert micro_batches(24) == [24, 16, 8, 4, 2, 1]
    assert micro_batches(1) == [1]


def test_static_bytes_counts_trainable_state_only(resnet18):
    n_params = sum(p.numel() for p in resnet18.parameters())
    s = static_bytes(resnet18, "adamw")
    assert s["params"] == s["grads"] == 4 * n_params
    assert s["opt_state"] == 2 * 4 * n_params
    assert s["buffers"] == sum(b.numel() * b.element_size() for b in resnet18.buffers())
    assert static_bytes(resnet18, "sgd")["opt_state"] == 4 * n_params
    try:
        freeze_body(resnet18)
        head = sum(p.numel() for p in resnet18.fc.parameters()) * 4
        s = static_bytes(resnet18, "adamw")
        assert s["params"] == 4 * n_params
        assert (s["grads"], s["opt_state"]) == (head, 2 * head)
    finally:
        resnet18.requires_grad_(True)
    with pytest.raises(SnugfitError, match=r"^opt: unknown optimizer 'lamb'"):
        static_bytes(resnet18, "lamb")


@pytest.fixture(scope="module")
def big_plan(resnet18):
    return make_plan(resnet18, bs=24, size=64, budget=parse_bytes("80GB"))


def test_plan_candidates(big_plan):
    cands = big_plan.candidates
    assert len(cands) == 2 * 2 * 6
    assert sorted({c.micro_bs for c in cands}, reverse=True) == [24, 16, 8, 4, 2, 1]
    for c in cands:
        assert c.accumulate == -(-24 // c.micro_bs)
    assert {c.accumulate for c in cands} == {1, 2, 3, 6, 12, 24}
    assert set(big_plan.profiles) == {"fp32", "bf16"}


def test_plan_with_room_picks_the_fastest(big_plan):
    c = big_plan.chosen
    assert all(k.fits for k in big_plan.candidates)
    assert (c.precision, c.checkpointing, c.micro_bs, c.accumulate) == ("bf16", False, 24, 1)
    assert c.speed == pytest.approx(2.0)
    assert big_plan.summary().startswith("plan: bf16, micro-batch 24 x 1 steps, checkpointing off")


def test_plan_peak_is_the_sum_of_its_terms(big_plan):
    c = next(k for k in big_plan.candidates if k.precision == "fp32" and k.micro_bs == 24)
    act = activation_bytes(big_plan.profiles["fp32"], 24, checkpointing=c.checkpointing)
    expected = sum(big_plan.static.values()) + act + 24 * 3 * 64 * 64 * 5 + 0.15 * act + 64 * MiB
    assert c.peak == int(expected)


def test_plan_below_the_full_batch_peak(resnet18, big_plan):
    full = next(
        c
        for c in big_plan.candidates
        if (c.precision, c.checkpointing, c.micro_bs) == ("fp32", False, 24)
    )
    reserved = 512 * MiB  # the default for "cuda": the CUDA context, outside the allocator
    budget = full.peak + reserved - 1
    plan = make_plan(resnet18, bs=24, size=64, budget=budget, precisions=("fp32",))
    assert plan.reserved == reserved
    c = plan.chosen
    assert c is not None and c.fits and c.peak <= budget - reserved
    assert c.micro_bs < 24
    assert not next(k for k in plan.candidates if k.peak == full.peak).fits


def test_plan_cpu_speed_model(resnet18):
    plan = make_plan(resnet18, bs=24, size=64, budget=parse_bytes("64GB"), device_type="cpu")
    assert plan.reserved == 0
    assert sorted({round(c.speed, 6) for c in plan.candidates}) == [0.75, 1.0, 1.05, 1.4]
    assert (plan.chosen.precision, plan.chosen.micro_bs) == ("bf16", 24)


def test_plan_nothing_fits(resnet18):
    plan = make_plan(resnet18, bs=8, size=64, budget=parse_bytes("600MiB"))
    assert plan.chosen is None
    smallest = min(c.peak for c in plan.candidates)
    summary = plan.summary()
    assert summary.startswith("plan: nothing fits in 88.0 MiB")
    assert f"needs {format_bytes(smallest)}" in summary


def test_plan_rejects_bad_arguments(resnet18):
    with pytest.raises(SnugfitError, match=r"^bs: expected a positive integer, got 0"):
        make_plan(resnet18, bs=0, size=64, budget=2**30)
    with pytest.raises(SnugfitError, match=r"^precision: unknown 'int8'"):
        make_plan(resnet18, bs=2, size=64, budget=2**30, precisions=("int8",))


def test_plan_table_renders(big_plan):
    console = Console(file=io.StringIO(), width=150)
    console.print(big_plan.table())
    text = console.file.getvalue()
    assert "bf16 + ckpt" in text and "accum steps" in text
    chosen_rows = [line for line in text.splitlines() if "▶" in line]
    assert len(chosen_rows) == 1
    assert "bf16" in chosen_rows[0] and "ckpt" not in chosen_rows[0]


def test_enforce_budget_caps_the_cuda_allocator(monkeypatch):
    from types import SimpleNamespace

    from snugfit.memory import enforce_budget

    calls = []
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda i: SimpleNamespace(total_memory=80 * 2**30)
    )
    monkeypatch.setattr(
        torch.cuda, "set_per_process_memory_fraction", lambda f, i: calls.append((f, i))
    )
    assert enforce_budget("8GiB", "cuda") == 8 * 2**30
    assert calls == [(0.1, 0)]
    assert enforce_budget("0.5", "cuda:0") == 40 * 2**30 and calls[-1] == (0.5, 0)
    with pytest.raises(SnugfitError, match="more than the card"):
        enforce_budget("100GiB", "cuda")
    assert enforce_budget("8GB", "cpu") is None  # validated, nothing to cap
    with pytest.raises(SnugfitError, match="memory_budget: cannot read"):
        enforce_budget("8 bananas", "cpu")
