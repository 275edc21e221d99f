"""Metrics computed over a whole validation set, on the device.

A metric takes the concatenated model outputs and targets of the validation
set and returns a 0-d tensor; the loop calls ``.item()`` once per epoch.
"""

from __future__ import annotations

import torch


def accuracy(preds: torch.Tensor, targs: torch.Tensor) -> torch.Tensor:
    """Fraction of samples whose arg-max prediction equals the target."""
    return (preds.argmax(dim=-1) == targs).float().mean()


def error_rate(preds: torch.Tensor, targs: torch.Tensor) -> torch.Tensor:
    """1 - accuracy."""
    return 1 - accuracy(preds, targs)


METRICS = {"accuracy": accuracy, "error_rate": error_rate}


def metric_name(fn) -> str:
    return getattr(fn, "__name__", type(fn).__name__)
