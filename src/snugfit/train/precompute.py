"""Precomputed frozen features: run the frozen body once, train the head in seconds.

fastai 0.7's ``precompute=True``: while everything but the head is frozen and
augmentation is off, the body's output for an image never changes, so it is
computed once per image and the head trains on those features. The features
are what the classifier receives (captured by a hook on it, so any head
arrangement works); they are kept in memory, or memory-mapped from the cache
folder when large, and keyed by the body's weights, the image size and
transform, and the data (paths, sizes, modification times, labels). When any of
those change, the key changes and the features are computed again.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from snugfit.callbacks.auto_precision import pick
from snugfit.data.cache import cache_dir
from snugfit.errors import reason_of
from snugfit.sizes import as_hw

log = logging.getLogger("snugfit")

# Above this many bytes of features, keep them in a memory-mapped file instead of RAM.
IN_MEMORY_LIMIT = 1 << 30


class FeatureLoader:
    """Batches of precomputed features, shuffled per epoch from ``(seed, epoch)``.

    A new one is made for each fit, so its ``epoch`` is the fit's epoch (the loop
    sets it: ``per_fit_epochs``), which makes a resumed fit shuffle the same way.
    """

    per_fit_epochs = True

    def __init__(self, feats, targs: torch.Tensor, bs: int, shuffle: bool, seed: int, device):
        self.feats, self.targs = feats, targs
        self.bs, self.shuffle, self.seed, self.device = bs, shuffle, seed, device
        self.epoch = 0

    def __len__(self) -> int:
        return math.ceil(len(self.targs) / self.bs)

    def __iter__(self):
        epoch, self.epoch = self.epoch, self.epoch + 1
        return self._batches(epoch, 0)

    def iter_from(self, skip: int):
        epoch, self.epoch = self.epoch, self.epoch + 1
        return self._batches(epoch, skip)

    def _batches(self, epoch: int, skip: int):
        n = len(self.targs)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        for start in range(skip * self.bs, n, self.bs):
            idx = order[start : start + self.bs]
            x = torch.as_tensor(self.feats[idx.numpy()]) if isinstance(self.feats, np.ndarray) else (
                self.feats[idx]
            )  # fmt: skip
            yield x.to(self.device, non_blocking=True), self.targs[idx].to(self.device)


def features_key(learn, split: str) -> str:
    """A digest of everything the features depend on."""
    h = hashlib.sha1()
    frozen = [p for group in learn.groups[:-1] for _, p in group]
    for t in [*frozen, *learn.model.buffers()]:
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    d = learn.dls
    pre = learn.preprocessing
    h.update(
        repr(
            (learn.arch, split, pre.size, pre.crop_pct, pre.mean, pre.std, "central crop")
        ).encode()
    )
    items = d.train_items if split == "train" else d.valid_items
    for path, label in items:
        st = Path(path).stat()
        h.update(f"{path}|{st.st_size}|{st.st_mtime_ns}|{label}\n".encode())
    return h.hexdigest()[:32]


@torch.no_grad()
def compute_features(
    learn, dl, trial: PrecisionTrial | None = None, body: torch.nn.Module | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The classifier's inputs and the targets over ``dl`` (model in eval mode).

    With a ``trial`` (where the learner times fp32 against bf16,
    `Learner.precision_is_timed`) the first batches alternate the two and the
    rest use the faster (the same rule as training steps, `auto_precision.pick`);
    a trial that has chosen keeps its choice for the next ``dl``. The frozen
    Lite0 on 2 cores computes hymenoptera's features at 336 px 1.6x faster in
    bf16 (18.8 s -> 11.5 s), and the head solved on them has the same validation
    error (2.0%; textures at 96 px: 3.3% both). The body runs with its BatchNorm
    folded into its convolutions: ``body``, or `Learner.inference_net` of the first
    batch."""
    learn.model.eval()
    targs, captured = [], []
    hook = None
    try:
        for xb, yb in dl:
            if hook is None:
                body = learn.inference_net(xb[:1]) if body is None else body
                capture = lambda m, args: captured.append(args[0].float())  # noqa: E731
                owner = learn.model if body is learn.net else body  # a wrapper has no head
                hook = owner.get_classifier().register_forward_pre_hook(capture)
            precision = trial.next() if trial else None
            start = time.perf_counter()
            learn.eval_outputs(xb, precision, net=body)
            if trial:
                trial.took(precision, time.perf_counter() - start)
            targs.append(yb)
    finally:
        if hook is not None:
            hook.remove()
    return torch.cat(captured).cpu(), torch.cat(targs).cpu()


class PrecisionTrial:
    """fp32 and bf16 in turn for ``rounds`` batches each, then the faster."""

    def __init__(self, rounds: int = 2):
        self.order = ["fp32", "bf16"] * rounds
        self.times: dict[str, list[float]] = {"fp32": [], "bf16": []}
        self.chosen: str | None = None

    def next(self) -> str:
        if self.order:
            return self.order.pop(0)
        if self.chosen is None:
            self.chosen = pick(self.times)
        return self.chosen

    def took(self, precision: str, seconds: float) -> None:
        if self.chosen is None:
            self.times[precision].append(seconds)


def feature_loaders(learn, store: dict) -> tuple[FeatureLoader, FeatureLoader]:
    """Train and validation loaders over precomputed features, computing them if needed.

    ``store`` (the learner's) keeps the features by `features_key` across fits.
    """
    d = learn.dls
    loaders = []
    trial = PrecisionTrial() if learn.precision_is_timed else None
    body = None  # folded once for both splits (0.36 s for Lite0 at 336 px on 2 cores)
    for split in ("train", "valid"):
        key = features_key(learn, split)
        if key not in store:
            dl = d.train if split == "train" else d.valid
            # The training images as validation shows them (no augmentation; the central
            # crop): a head fitted on them meets the same view of an image at validation.
            # Fitted on whole decoded squares instead, the solved head on hymenoptera
            # (336 px) had 3.3% validation error and loss 0.086, not 2.0% and 0.076.
            if body is None:
                body = learn.inference_net(torch.rand(1, 3, *as_hw(d.size)))
            feats, targs = compute_features(learn, _evaluated(dl), trial, body)
            if feats.numel() * 4 > IN_MEMORY_LIMIT:
                feats = _on_disk(feats, cache_dir() / "features" / f"{key}.npy")
            store[key] = (feats, targs)
            how = f" in {trial.chosen} (timed against the other)" if trial and trial.chosen else ""
            log.info(f"precomputed {split} features{how}: {tuple(store[key][0].shape)}")
        feats, targs = store[key]
        loaders.append(FeatureLoader(feats, targs, d.bs, split == "train", d.seed, learn.device))
    return loaders[0], loaders[1]


def _evaluated(dl):
    """``dl``'s images with the validation transform, in order (a loader without
    `as_evaluated`, such as a list of batches, as it is)."""
    return dl.as_evaluated() if hasattr(dl, "as_evaluated") else dl


def _on_disk(feats: torch.Tensor, path: Path):
    """``feats`` memory-mapped from ``path`` (written there); in memory if the cache
    folder cannot be written (disk full, permission denied), with a warning."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written, not filled through a memory map: a full disk is then an OSError
        # here, not a SIGBUS while the pages are flushed.
        with open(path, "wb") as f:
            np.lib.format.write_array(f, feats.numpy().astype(np.float32, copy=False))
        return np.load(path, mmap_mode="r")
    except OSError as e:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)  # a partial file
        log.warning(f"cannot write {path} ({reason_of(e)}): the features stay in memory")
        return feats


def stored_valid_features(learn, store: dict) -> FeatureLoader | None:
    """The validation set's stored features, when the body is frozen and they were
    computed for exactly these weights, images and transform (`features_key`): the
    head on them gives the whole model's validation outputs (eval mode) without
    running the body again. None otherwise."""
    d = learn.dls
    if not store or not learn.can_precompute or not learn.body_frozen:
        return None
    found = store.get(features_key(learn, "valid"))
    if found is None:
        return None
    feats, targs = found
    return FeatureLoader(feats, targs, d.bs, False, d.seed, learn.device)
