"""What the memory levers do to saved activations, and a plan for EfficientNet-B7 on an 8 GB card.

Counts, on the CPU, the bytes autograd saves per image for resnet50 @ 224 and
efficientnet_b7 @ 600 (random weights) in fp32, 16-bit (CPU bf16 autocast), with
activation checkpointing, and with the body frozen. Then plans "efficientnet_b7,
600 px, effective batch 32, 8 GB" and prints the plan. With a CUDA device it also
runs the chosen configuration and the largest plain fp32 micro-batch that fits for
a few steps under an 8 GB memory cap, and prints predicted vs measured peaks and
images/s.

    PYTHONPATH=src .venv/bin/python bench/memory.py
"""

from __future__ import annotations

import time

import timm
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from _common import run_steps
from snugfit.memory import (
    ActivationProfile,
    MemoryPlan,
    activation_bytes,
    make_plan,
    parse_bytes,
    profile_activations,
    saved_tensor_bytes,
)
from snugfit.models import set_grad_checkpointing

MiB = 2**20
MODELS = [("resnet50", 224), ("efficientnet_b7", 600)]
PLAN_ARCH, PLAN_SIZE, PLAN_BS, PLAN_BUDGET = "efficientnet_b7", 600, 32, "8GB"

console = Console(width=130)


def per_sample_ckpt(profile: ActivationProfile) -> float:
    """Checkpointed per-sample bytes predicted from the plain profile (kept + one block)."""
    return activation_bytes(profile, 1, checkpointing=True) - profile.fixed


def predicted_ckpt_kept(profile: ActivationProfile) -> float:
    """The kept part of the checkpointed prediction: outside the blocks plus block inputs."""
    inside, inputs = sum(profile.stage_per_sample), sum(profile.stage_input_per_sample)
    return profile.per_sample - inside + inputs


def measured_ckpt_kept(model: nn.Module, size: int) -> float:
    """Per-sample bytes that stay saved with checkpointing on, counted at n = 1 and 2.

    Non-reentrant checkpointing keeps each block's input where the outer hooks see it
    and hides the block's own tensors, so this count is what is *kept* between forward
    and backward; it misses the one block recomputed at a time during backward.
    """
    set_grad_checkpointing(model, True)
    try:
        n1, n2 = (saved_tensor_bytes(model, torch.randn(n, 3, size, size)).total for n in (1, 2))
    finally:
        set_grad_checkpointing(model, False)
    return float(n2 - n1)


def frozen_profile(model: nn.Module, size: int) -> ActivationProfile:
    """Profile with only the classifier trainable, then unfreeze again."""
    model.requires_grad_(False)
    model.get_classifier().requires_grad_(True)
    try:
        return profile_activations(model, size)
    finally:
        model.requires_grad_(True)


def lever_table() -> tuple[Table, MemoryPlan]:
    """Per-image saved activations under each lever, and the plan for EfficientNet-B7."""
    cols: dict[str, dict[str, float]] = {}
    plan = None
    for arch, size in MODELS:
        start = time.perf_counter()
        model = timm.create_model(arch, pretrained=False)
        if arch == PLAN_ARCH:
            # The plan probes fp32 and bf16 anyway: reuse its profiles.
            plan = make_plan(model, bs=PLAN_BS, size=PLAN_SIZE, budget=parse_bytes(PLAN_BUDGET))
            fp32, half = plan.profiles["fp32"], plan.profiles["bf16"]
        else:
            fp32 = profile_activations(model, size)
            half = profile_activations(model, size, precision="bf16")
        cols[f"{arch} @ {size}"] = {
            "fp32": fp32.per_sample,
            "16-bit (CPU bf16 autocast)": half.per_sample,
            "fp32 + ckpt, predicted (kept + 1 block recomputed)": per_sample_ckpt(fp32),
            "fp32 + ckpt, predicted kept only": predicted_ckpt_kept(fp32),
            "fp32 + ckpt, measured kept (counted with checkpointing on)": measured_ckpt_kept(
                model, size
            ),
            "16-bit + ckpt, predicted": per_sample_ckpt(half),
            "fp32, body frozen (head trains)": frozen_profile(model, size).per_sample,
        }
        seconds = time.perf_counter() - start
        console.print(f"profiled {arch} @ {size} px on the CPU in {seconds:.1f} s")
        del model

    table = Table(title="saved activations per image (MiB), counted on the CPU")
    table.add_column("configuration")
    for name in cols:
        table.add_column(name, justify="right")
        table.add_column("vs fp32", justify="right")
    for row in next(iter(cols.values())):
        cells = []
        for values in cols.values():
            v = values[row]
            text = f"{v / MiB:.1f}" if v >= MiB / 10 else f"{v / MiB:.4f} ({v / 1024:.0f} KiB)"
            cells += [text, f"{v / values['fp32']:.3g}"]
        table.add_row(row, *cells)
    return table, plan


# --------------------------------------------------------------------------- CUDA check


def cuda_check(plan: MemoryPlan) -> None:
    """Run the plan's choice and the largest plain fp32 micro-batch that fits, capped at the budget."""
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, plan.budget / total))
    fp32 = [c for c in plan.candidates if c.fits and c.precision == "fp32" and not c.checkpointing]
    runs = [("plan", plan.chosen)] + ([("largest plain fp32", fp32[0])] if fp32 else [])
    table = Table(title=f"{PLAN_ARCH} @ {PLAN_SIZE}, bs {PLAN_BS}, capped at {PLAN_BUDGET}")
    for col in ("run", "config", "micro-batch", "predicted peak", "max_memory_allocated", "img/s"):
        table.add_column(col, justify="right")
    for name, c in runs:
        model = timm.create_model(PLAN_ARCH, pretrained=False).cuda()
        try:
            peak, speed = run_steps(model, c, PLAN_BS, PLAN_SIZE)
            cells = [f"{peak / MiB:.0f} MiB", f"{speed:.1f}"]
        except torch.cuda.OutOfMemoryError:
            cells = ["out of memory", "-"]
        del model
        torch.cuda.empty_cache()
        table.add_row(name, c.label, str(c.micro_bs), f"{c.peak / MiB:.0f} MiB", *cells)
    console.print(table)


def main() -> None:
    torch.manual_seed(0)
    start = time.perf_counter()
    table, plan = lever_table()
    console.print(f"profiling took {time.perf_counter() - start:.1f} s in all")
    console.print(table)
    console.print(
        "[dim]measured ckpt: with non-reentrant checkpointing the outer saved-tensor hooks "
        "see the block inputs that checkpointing keeps (and what lies outside the blocks), "
        "not the block recomputed during backward; the prediction adds the largest block.[/]"
    )
    console.print(plan.table())
    console.print(plan.summary())
    if torch.cuda.is_available() and plan.chosen is not None:
        cuda_check(plan)
    else:
        console.print("no CUDA device: predicted peaks not checked against max_memory_allocated")


if __name__ == "__main__":
    main()
