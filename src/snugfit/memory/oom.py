"""Out-of-memory recovery as small standalone pieces the fit loop calls.

When a step runs out of memory the loop (``Learner._step``):

1. leaves the ``except`` block first: the exception's traceback holds every
   tensor of the failed step, so nothing can be freed while it is alive;
2. drops its own references, collects garbage and empties the CUDA cache;
3. restores what the failed attempt changed: BatchNorm running statistics and
   the random number generators (`StepSnapshot`); the GradScaler only changes
   after all micro-batches succeed, so it needs nothing;
4. takes the next fallback (`next_fallback`): half the micro-batch (twice the
   accumulation steps), then activation checkpointing, then 16-bit precision;
   under torchrun all ranks take the most cautious of the failed ranks' settings
   (``caution`` orders them);
5. runs the *same batch* again: no sample is skipped and the effective batch,
   and so the learning-rate schedule, are unchanged.
"""

from __future__ import annotations

import gc
import logging

import torch
from torch import nn

from snugfit.memory.settings import MemorySettings

log = logging.getLogger("snugfit")

_OOM_MARKERS = (
    "out of memory",
    "CUDNN_STATUS_NOT_SUPPORTED",  # cuDNN's way of failing a too-large workspace
    "can't allocate memory",  # the CPU allocator
)


def is_oom(e: BaseException) -> bool:
    """Is ``e`` an out-of-memory error (CUDA, cuDNN or CPU allocator)?"""
    if isinstance(e, torch.OutOfMemoryError):
        return True
    return isinstance(e, RuntimeError) and any(m in str(e) for m in _OOM_MARKERS)


def release_memory(device: torch.device) -> None:
    """Free what the failed step left: cyclic garbage, then the CUDA cache."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class StepSnapshot:
    """What a forward pass changes besides the gradients: BN buffers and RNG state.

    Taken before each step; restored if the step fails, so the retry starts from
    the same state as the failed attempt. Only BatchNorm layers in train mode are
    copied (frozen ones do not change), which costs a few small copies per step.
    """

    def __init__(self, model: nn.Module, device: torch.device):
        self.buffers = [
            b
            for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
            for b in m.buffers()
        ]
        self.saved = [b.clone() for b in self.buffers]
        self.cpu_rng = torch.get_rng_state()
        self.device = device
        self.cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    @torch.no_grad()
    def restore(self) -> None:
        for b, s in zip(self.buffers, self.saved, strict=True):
            b.copy_(s)
        torch.set_rng_state(self.cpu_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state(self.cuda_rng, self.device)


def next_fallback(current: MemorySettings, restart_bs: int, half: str) -> MemorySettings | None:
    """The next, smaller setting after an OOM, or None when nothing is left.

    Halve the micro-batch down to 1. Then turn on activation checkpointing and
    start again from ``restart_bs`` (checkpointing may fit a much larger
    micro-batch than 1, which is faster), halving again; then likewise with
    ``half`` (the device's 16-bit type) instead of fp32.

    ``current.micro_bs`` is the micro-batch in use (not None).

    >>> next_fallback(MemorySettings(1, False, "fp32"), 8, "bf16").levers()
    {'micro_bs': 8, 'checkpointing': True, 'precision': 'fp32'}
    """
    if current.micro_bs > 1:
        return current.replace(micro_bs=current.micro_bs // 2, accumulate=None)
    if not current.checkpointing:
        return current.replace(micro_bs=restart_bs, checkpointing=True, accumulate=None)
    if current.precision == "fp32":
        return current.replace(micro_bs=restart_bs, checkpointing=True, precision=half)
    return None


def caution(s: MemorySettings) -> tuple:
    """Order of `next_fallback`'s settings: later ones need less memory."""
    return (s.precision != "fp32", s.checkpointing, -s.micro_bs)
