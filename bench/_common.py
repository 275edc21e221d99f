"""Pieces shared by the loop benchmarks: synthetic batches, a hand-written loop."""

from __future__ import annotations

import time
from types import SimpleNamespace

import torch
from torch import nn


def synthetic_dls(n_batches: int, bs: int, size: int, n_classes: int, device: torch.device):
    """Fixed batches already on the device: the benchmark measures the loop, not data."""
    g = torch.Generator().manual_seed(0)
    batches = [
        (
            torch.randn(bs, 3, size, size, generator=g).to(device),
            torch.randint(0, n_classes, (bs,), generator=g).to(device),
        )
        for _ in range(n_batches)
    ]
    return SimpleNamespace(
        train=batches,
        valid=batches[:1],
        bs=bs,
        size=size,
        device=device,
        vocab=[str(i) for i in range(n_classes)],
        c=n_classes,
        crop_pct=0.875,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    )


def hand_written_epoch(model: nn.Module, opt, batches, precision: str, device) -> None:
    """The loop everyone writes: zero_grad, forward under autocast, backward, step."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    model.train()
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def reset_peak(device: torch.device) -> None:
    """Start a new peak-memory window (CUDA only; nothing to do elsewhere)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device: torch.device) -> int:
    """``torch.cuda.max_memory_allocated`` since `reset_peak`; 0 off CUDA (not measurable)."""
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0


def run_steps(
    model: nn.Module, c, bs: int, size: int, steps: int = 3, *, device=None, seg=0, n_classes=1000
):
    """Train ``steps`` timed steps, after one warm-up, in configuration ``c``.

    ``c`` is a plan `Candidate` (precision, checkpointing, micro_bs). The whole batch
    lives on the device as the planner assumes (uint8 images plus their floats);
    ``seg`` > 0: the model segments into ``seg`` classes (mask targets); else it
    classifies into ``n_classes``.

    Returns:
        The peak allocated bytes over the timed steps (`peak_bytes`: 0 off CUDA) and
        images per second.
    """
    from snugfit.memory import autocast_for
    from snugfit.models import set_grad_checkpointing

    device = device or torch.device("cuda")
    set_grad_checkpointing(model, c.checkpointing)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast = autocast_for(c.precision, device.type)
    images = torch.randint(0, 256, (bs, 3, size, size), dtype=torch.uint8, device=device)
    shape = (bs, size, size) if seg else (bs,)
    labels = torch.randint(0, seg or n_classes, shape, device=device)
    for step in range(steps + 1):
        if step == 1:  # the warm-up allocated the optimizer state; measure from here
            sync(device)
            reset_peak(device)
            start = time.perf_counter()
        x = images.float().div_(255)
        for i in range(0, bs, c.micro_bs):
            xb, yb = x[i : i + c.micro_bs], labels[i : i + c.micro_bs]
            with autocast():
                # Weight by the micro-batch's share so the summed gradient is the batch's.
                loss = nn.functional.cross_entropy(model(xb), yb) * (len(yb) / bs)
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(device)
    seconds = time.perf_counter() - start
    set_grad_checkpointing(model, False)
    return peak_bytes(device), steps * bs / seconds
