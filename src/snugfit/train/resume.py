"""Resuming a recipe where a checkpoint left it: fit numbering, position, skipping.

A recipe (``fine_tune``, ``auto_fit``...) runs a fixed sequence of fits; each
``Learner._fit`` call gets the next index. A resumable checkpoint records the
next (fit index, epoch, batch) to run (`position`). Resuming loads it
(`load_resume`): fits before it are skipped (their effect is in the weights),
that one continues from the recorded batch (`resume_point`), later ones run as
usual. `resumable` marks the public training methods that take ``resume=path``.
The file format itself is `snugfit.checkpoint`'s.
"""

from __future__ import annotations

import functools
import logging

import torch

from snugfit.errors import SnugfitError
from snugfit.saving.checkpoint import load_checkpoint
from snugfit.train.planning import phase_key

log = logging.getLogger("snugfit")


def resumable(method):
    """Mark a public training method: it takes ``resume=path`` and numbers its fits.

    While the outermost call runs, Ctrl-C stops training at the next batch
    boundary, after the callbacks have run (see `snugfit.interrupt`).
    """

    @functools.wraps(method)
    def wrapper(self, *args, resume=None, **kwargs):
        outer = self._recipe_depth == 0
        if outer:
            self._fit_index = 0
            self._resume_at = load_resume(self, resume) if resume is not None else None
        elif resume is not None:
            raise SnugfitError("resume: pass it to the outermost training call only")
        self._recipe_depth += 1
        try:
            if not outer:
                return method(self, *args, **kwargs)
            with self._interrupt:
                return method(self, *args, **kwargs)
        finally:
            self._recipe_depth -= 1
            if outer:
                self._resume_at = None

    return wrapper


def position(learn, after_batch: bool) -> dict:
    """Where training stands: the next (fit, epoch, batch) to run."""
    if after_batch:
        epoch, it = learn.epoch, learn.iter + 1
    else:
        epoch, it = learn.epoch + 1, 0
    if epoch >= learn.n_epoch:
        return {"fit_index": learn.fit_index + 1, "epoch": 0, "iter": 0}
    return {"fit_index": learn.fit_index, "epoch": epoch, "iter": it}


def load_resume(learn, path) -> dict:
    """Load a resumable checkpoint into ``learn``; returns where to resume."""
    meta = load_checkpoint(learn, path, resume=True)
    if learn.dls is not None:
        learn._plan_key = phase_key(learn)  # keep the checkpoint's memory settings
    log.info(f"resuming from {path} at {meta['position']}")
    learn.events.emit("resume", checkpoint=str(path), position=meta["position"])
    # A recipe may draw random numbers before it reaches the resumed fit (auto_fit
    # validates and precomputes features first): the first run drew those before
    # its checkpoint, so the generators are set again as that fit starts.
    return {**meta["position"], "rng": _rng_state()}


def resume_point(learn) -> tuple[int | None, int]:
    """The (epoch, batch) the current fit starts from; epoch None: skip the fit."""
    at = learn._resume_at
    if at is None or learn.fit_index > at["fit_index"]:
        return 0, 0
    if learn.fit_index < at["fit_index"]:
        return None, 0
    return at["epoch"], at["iter"]


def rewind_rng(learn) -> None:
    """In the fit resumed from: the random generators as at the checkpoint."""
    at = learn._resume_at
    if at is not None and learn.fit_index == at["fit_index"]:
        _set_rng_state(at["rng"])


def _rng_state() -> tuple:
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    return torch.get_rng_state(), torch.cuda.get_rng_state_all() if cuda else None


def _set_rng_state(state: tuple) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
