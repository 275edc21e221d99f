"""Mixed precision: which 16-bit type to use, autocast contexts, gradient scaling.

``precision="auto"`` resolves per device:

- CUDA with native bf16 (compute capability >= 8.0): ``bf16`` (no loss scaling needed);
- older CUDA cards: ``fp16`` with a `torch.amp.GradScaler`;
- CPU: ``fp32`` unless the processor has native bf16 instructions (AVX512-BF16 or
  AMX). Then the first training steps of each phase alternate fp32 and bf16 and
  the faster is kept (`snugfit.callbacks.auto_precision`): measured on a 2-core
  AVX512-BF16 machine, EfficientNet-Lite0, channels_last, a training step is 1.4x
  faster in bf16 at 224 px and bs 32, but 0.8x at bs 8 and 0.55x at 64 px, so no
  fixed rule is right. Without those instructions bf16 is emulated and slower.
"""

from __future__ import annotations

import contextlib
import functools

import torch

from snugfit.errors import SnugfitError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when the CPU advertises bf16 instructions (Linux /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def check_precision(precision: str, allow_auto: bool = True) -> str:
    """``precision`` if it is one of `PRECISIONS` (``"auto"`` only with ``allow_auto``)."""
    allowed = PRECISIONS if allow_auto else PRECISIONS[1:]
    if precision not in allowed:
        what = "unknown value" if allow_auto else "unknown"
        raise SnugfitError(f"precision: {what} {precision!r}; use one of {', '.join(allowed)}")
    return precision


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """Turn ``"auto"`` into the concrete precision for ``device``."""
    check_precision(precision)
    device = torch.device(device)
    if precision != "auto":
        return precision
    if device.type == "cuda":
        native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        return "bf16" if native_bf16 else "fp16"
    return "fp32"  # CPU: fp32 unless measured faster (see module docstring)


def half_precision(device: torch.device | str) -> str:
    """The 16-bit type to fall back to on ``device`` (bf16 where native, else fp16)."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        return "fp16"
    return "bf16"


def autocast(precision: str, device: torch.device | str):
    """The autocast context of forward passes (a no-op for fp32): the one rule, for
    training, evaluation and the memory probe alike. ``device`` may be a type ("cpu")."""
    if precision == "fp32":
        return contextlib.nullcontext()
    device_type = device if isinstance(device, str) else device.type
    return torch.autocast(device_type, dtype=DTYPES[precision])


def make_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 (steps with inf/NaN gradients are skipped), else None."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)
