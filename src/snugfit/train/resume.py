"""Resuming a recipe where a checkpoint left it: fit numbering, position, skipping.

A recipe (``fine_tune``, ``auto_fit``...) runs a fixed sequence of fits; each fit
gets the next index from the learner's `RecipeProgress`. A resumable checkpoint
records the next (fit index, epoch, batch) to run (``Learner.position``).
Resuming from it (`RecipeProgress.begin` with the checkpoint's position): fits
before it are skipped (their effect is in the weights), that one continues from
the recorded batch (`RecipeProgress.start_point`), later ones run as usual.
`resumable` marks the public training methods that take ``resume=path``. The file
format itself is `snugfit.saving.checkpoint`'s.
"""

from __future__ import annotations

import functools

import torch

from snugfit.errors import SnugfitError


class RecipeProgress:
    """Where the outermost training call stands: its depth, its fits, and where to resume.

    Attributes:
        depth: nesting of `resumable` calls (a recipe calls ``fit_one_cycle``...).
        resume_at: the checkpoint's position plus the random generators' state as
            the recipe started, or None when not resuming.
    """

    def __init__(self):
        self.depth = 0
        self.resume_at: dict | None = None
        self._next = 0

    def begin(self, resume_at: dict | None) -> None:
        """An outermost call starts: fits are numbered from 0; resume at ``resume_at``."""
        self._next, self.resume_at = 0, resume_at

    def end(self) -> None:
        self.resume_at = None

    def next_fit(self) -> int:
        """The index of the fit starting now."""
        index, self._next = self._next, self._next + 1
        return index

    def start_point(self, fit_index: int) -> tuple[int | None, int]:
        """The (epoch, batch) fit ``fit_index`` starts from; epoch None: skip the fit."""
        at = self.resume_at
        if at is None or fit_index > at["fit_index"]:
            return 0, 0
        if fit_index < at["fit_index"]:
            return None, 0
        return at["epoch"], at["iter"]

    def rewind_rng(self, fit_index: int) -> None:
        """In the fit resumed from: the random generators as at the checkpoint.

        A recipe may draw random numbers before it reaches the resumed fit (auto_fit
        validates and precomputes features first): the first run drew those before
        its checkpoint, so the generators are set again as that fit starts.
        """
        at = self.resume_at
        if at is not None and fit_index == at["fit_index"]:
            set_rng_state(at["rng"])


def resumable(method):
    """Mark a public training method: it takes ``resume=path`` and numbers its fits.

    While the outermost call runs, Ctrl-C stops training at the next batch
    boundary, after the callbacks have run (see `snugfit.train.interrupt`).
    """

    @functools.wraps(method)
    def wrapper(self, *args, resume=None, **kwargs):
        progress = self.progress
        outer = progress.depth == 0
        if outer:
            progress.begin(self.load_resume(resume) if resume is not None else None)
        elif resume is not None:
            raise SnugfitError("resume: pass it to the outermost training call only")
        progress.depth += 1
        try:
            if not outer:
                return method(self, *args, **kwargs)
            with self.ctrl_c:
                return method(self, *args, **kwargs)
        finally:
            progress.depth -= 1
            if outer:
                progress.end()

    return wrapper


def position(fit_index: int, epoch: int, it: int, n_epoch: int, after_batch: bool) -> dict:
    """The next (fit, epoch, batch) to run, after batch ``it`` of ``epoch`` (or after
    the whole epoch) of a fit of ``n_epoch`` epochs.

    >>> position(0, 1, 4, n_epoch=2, after_batch=False)
    {'fit_index': 1, 'epoch': 0, 'iter': 0}
    """
    if after_batch:
        epoch, it = epoch, it + 1
    else:
        epoch, it = epoch + 1, 0
    if epoch >= n_epoch:
        return {"fit_index": fit_index + 1, "epoch": 0, "iter": 0}
    return {"fit_index": fit_index, "epoch": epoch, "iter": it}


def rng_state() -> tuple:
    """The CPU (and, when initialised, CUDA) random generators' state."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    return torch.get_rng_state(), torch.cuda.get_rng_state_all() if cuda else None


def set_rng_state(state: tuple) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
