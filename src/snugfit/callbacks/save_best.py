"""Keep the weights of the best epoch and load them when training ends
(fastai's SaveModelCallback)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from snugfit.callbacks import Callback
from snugfit.callbacks.early_stopping import Monitor
from snugfit.saving.atomic import atomic_write, dedupe_storage

log = logging.getLogger("snugfit")


class SaveBest(Callback):
    """Save the weights whenever ``monitor`` improves; reload the best ones at ``after_fit``.

    Args:
        monitor: "valid_loss" (default), "train_loss" or a metric's name.
        min_delta: the smallest change that counts as an improvement.
        comp: ``comp(new, best)`` is True when ``new`` is better; None: lower is
            better for names with "loss" or "error", higher for the others.
        path: a ``.safetensors`` file to keep the best weights in (written
            atomically); None keeps a copy in host memory instead (not on the
            device: the copy must not take memory from training).
    """

    order = 70  # after the Recorder appended the epoch's row

    def __init__(
        self,
        monitor: str = "valid_loss",
        min_delta: float = 0.0,
        comp: Callable | None = None,
        path=None,
    ):
        self.monitor = Monitor(monitor, min_delta, comp)
        self.path = Path(path) if path is not None else None
        self.weights: dict[str, torch.Tensor] | None = None

    def before_fit(self, learn) -> None:
        self.monitor.check_name(learn)
        self.monitor.reset()
        self.weights = None

    def after_epoch(self, learn) -> None:
        if not self.monitor.update(learn):
            return
        state = {k: v.detach().to("cpu", copy=True) for k, v in learn.model.state_dict().items()}
        if self.path is None:
            self.weights = state
        else:
            from safetensors.torch import save_file

            tensors = dedupe_storage({k: v.contiguous() for k, v in state.items()})
            atomic_write(self.path, lambda tmp: save_file(tensors, str(tmp)))

    def after_fit(self, learn) -> None:
        # Runs even when the fit stopped on an error: the best epoch is still the best.
        m = self.monitor
        if m.best_epoch is None:
            return
        if self.path is None:
            state = self.weights
        else:
            from safetensors.torch import load_file

            state = load_file(str(self.path))
        learn.model.load_state_dict(state)
        log.info(f"best epoch {m.best_epoch} ({m.name} {m.best:.6f}): its weights are loaded")
        m.reset()  # a later fit that fails before its before_fit must not reload these
        self.weights = None
