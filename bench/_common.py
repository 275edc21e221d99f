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
