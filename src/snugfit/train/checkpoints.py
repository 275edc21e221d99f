"""Saving and loading a learner: training checkpoints, resuming, the model for prediction.

`CheckpointIO` is the part of `snugfit.train.learner.Learner` that hands its state
to `snugfit.saving` as a `TrainingState` and takes it back, and writes the model
folder ``learn.save(path)`` (the file formats are `snugfit.saving`'s).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from snugfit import distributed
from snugfit.errors import SnugfitError
from snugfit.saving import TrainingState, load_training_state, write_checkpoint, write_model_folder
from snugfit.train.resume import rng_state

log = logging.getLogger("snugfit")


class CheckpointIO:
    """Checkpoints and model files of a Learner (see the module docstring)."""

    def save_checkpoint(self, path, position: dict | None = None) -> Path:
        """Training state (weights, optimizer, GradScaler, memory settings, freeze
        state; with ``position``, what resuming needs) in one safetensors file,
        written atomically (`snugfit.saving.checkpoint`)."""
        # A loss not checked yet (CUDA checks one step late) is checked first: a
        # non-finite one raises with the last good weights restored, nothing is written.
        self.nonfinite.resolve()
        if not distributed.is_main():
            return Path(path)  # under torchrun the ranks hold the same state: rank 0 writes
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        state = TrainingState(
            model=self.model.state_dict(),
            optimizer=self.opt.state_dict(),
            scaler=self.scaler.state_dict() if self.scaler is not None else None,
            precision=self.precision,
            micro_bs=self.micro_bs,
            checkpointing=self.checkpointing,
            frozen_to=self.frozen_to,
            arch=self.arch,
            position=position,
            data_epoch=self._data_epoch(position),
            recorder=self.recorder.state(),
            recipe_state=self.recipe_state,
            recipe_tensors=self.recipe_tensors,
            rng_cpu=torch.get_rng_state(),
            rng_cuda=torch.cuda.get_rng_state_all() if cuda else [],
        )
        return write_checkpoint(path, state)

    def _data_epoch(self, position: dict | None) -> int | None:
        """The loader epoch a resumed run must iterate first.

        A loader counts the epochs it has started: mid-epoch, the epoch in progress
        is one less than its counter. Not so while the fit trains on precomputed
        features: the image loader then has no epoch in progress.
        """
        train_dl = getattr(self.dls, "train", None)
        epoch = getattr(train_dl, "epoch", None)
        if epoch is None or position is None:
            return epoch
        training_dl = getattr(self, "train_dl", train_dl)
        return epoch - 1 if position["iter"] > 0 and training_dl is train_dl else epoch

    def load_checkpoint(self, path, resume: bool = False) -> TrainingState:
        """Restore the training state from ``path``; with ``resume`` also the random
        generators, the data epoch, the history and the recipe's decisions, for an
        exact continuation. Returns what was read."""
        state = load_training_state(path, resume=resume)
        try:
            self.model.load_state_dict(state.model)
        except RuntimeError as e:
            raise SnugfitError(f"{path}: weights do not match this model ({e})") from None
        self.freeze_to(state.frozen_to)
        self.opt.load_state_dict(state.optimizer)
        self.set_memory("checkpoint", precision=state.precision, micro_bs=state.micro_bs,
                        checkpointing=state.checkpointing)  # fmt: skip
        if self.scaler is not None and state.scaler:
            self.scaler.load_state_dict(state.scaler)
        if resume:
            torch.set_rng_state(state.rng_cpu)
            if state.rng_cuda and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state.rng_cuda)
            train_dl = getattr(self.dls, "train", None)
            if state.data_epoch is not None and hasattr(train_dl, "epoch"):
                train_dl.epoch = state.data_epoch
            self.recorder.load_state(state.recorder)
            self.recipe_state = dict(state.recipe_state)
            self.recipe_tensors = state.recipe_tensors
        return state

    def load_resume(self, path) -> dict:
        """Load a resumable checkpoint; returns where to resume (and the generators'
        state now, which the resumed fit starts from again: `RecipeProgress.rewind_rng`)."""
        state = self.load_checkpoint(path, resume=True)
        if self.dls is not None:
            self.planner.settled(self.phase_key())  # keep the checkpoint's memory settings
        log.info(f"resuming from {path} at {state.position}")
        self.events.emit("resume", checkpoint=str(path), position=state.position)
        return {**state.position, "rng": rng_state()}

    def save(self, path) -> Path:
        """Write ``path/model.safetensors`` and ``path/snugfit.json``: no pickle."""
        if not distributed.is_main():
            return Path(path)  # rank 0 writes for all
        if self.model_spec["arch"] is None:
            raise SnugfitError(
                "save: this learner's model is not a timm architecture name; "
                "save its state_dict yourself or build it with vision_learner(arch='...')"
            )
        return write_model_folder(path, self.model, {**self.model_spec, **self.infer_config})

    def to(self, device: torch.device):
        """Move the model to ``device`` (a learner loaded for prediction)."""
        self.device = torch.device(device)
        self.model.to(self.device)
        return self
