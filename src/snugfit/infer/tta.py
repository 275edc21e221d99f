"""Test-time augmentation: average the predictions over augmented copies of each image.

fastai's ``Learner.tta``: the images go through the *training* augmentation
``n`` times, the softmax outputs (sigmoid for a multi-label learner) are averaged,
and the average is blended with the predictions of the plain validation
transform (``torch.lerp`` in fastai)::

    probs = (1 - beta) * mean_i softmax(model(augment_i(x))) + beta * softmax(model(x))

so ``beta=1`` gives the plain predictions and ``beta=0`` the augmented average.
``beta=None`` also gives the augmented average alone, without the plain pass
(fastai returns both as a tuple there).

The augmented copies start where training's do: an `ImageDataLoaders` loader's
files are decoded as training images (at ``presize``, uncropped) and augmented
with `snugfit.augment.batch_augment` at the learner's settings; any other loader's
batches are denormalised and augmented. The random draws come from one generator
seeded with ``seed``, so a call is deterministic. One batch is held at a time: its
``n`` copies are made and predicted one after another.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from snugfit.data.augment import batch_augment, denormalize
from snugfit.errors import SnugfitError, check_count


@torch.no_grad()
def tta(learn, n: int = 4, dl=None, beta: float | None = 0.25, seed: int = 0):
    """Test-time-augmented probabilities of ``dl`` (default: the validation set).

    Args:
        learn: the `Learner`.
        n: augmented passes.
        dl: a loader of ``(images, targets)``; default ``learn.dls.valid``.
        beta: weight of the plain (un-augmented) predictions, in [0, 1]; None: none
            and no plain pass.
        seed: seed of the augmentation's random draws.

    Returns:
        ``(probs, targets)``: ``(N, C)`` probabilities (rows sum to 1) and ``(N,)``
        targets, on the learner's device, as ``get_preds`` orders them. Multi-label:
        per-class probabilities and ``(N, C)`` multi-hot targets.
    """
    n = check_count("n", n, 1)
    if beta is not None and (isinstance(beta, bool) or not 0 <= beta <= 1):
        raise SnugfitError(f"beta: expected a number in [0, 1] or None, got {beta!r}")
    if dl is None:
        if learn.dls is None:
            raise SnugfitError("tta: this learner has no data; pass dl=(a loader of batches)")
        dl = learn.dls.valid
    pre = learn.preprocessing
    settings = _augment_settings(learn.dls)
    gen = torch.Generator().manual_seed(seed)
    learn.model.eval()
    probs, targs = [], []
    for x, y in _source_batches(learn, dl):
        total = None
        for _ in range(n):
            xb = batch_augment(x, pre.size, generator=gen, mean=pre.mean, std=pre.std, **settings)
            p = learn.activation(learn.eval_outputs(xb))
            total = p if total is None else total.add_(p)
        probs.append(total.div_(n))
        targs.append(y)
    if not probs:
        raise SnugfitError("tta: the loader yielded no images (all unreadable?)")
    aug, targets = torch.cat(probs), torch.cat(targs)
    if beta is None:
        return aug, targets
    plain, plain_targets = learn.get_preds(dl)
    if not torch.equal(plain_targets.to(targets.device), targets):
        raise SnugfitError("tta: the augmented and plain passes saw different items")
    return torch.lerp(aug, learn.activation(plain).to(aug.device), float(beta)), targets


def _augment_settings(dls) -> dict:
    """The training augmentation's settings (batch_augment's defaults where unset)."""
    names = ("min_scale", "max_rotate", "flip", "max_lighting")
    return {k: getattr(dls, k) for k in names if hasattr(dls, k)}


def _source_batches(learn, dl) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(images, targets)`` to augment: images on the device, values in [0, 255]."""
    from snugfit.data.device_loader import DeviceLoader

    if not isinstance(dl, DeviceLoader):
        cfg = learn.infer_config
        for x, y in dl:
            if x.ndim != 4:
                raise SnugfitError("tta: the loader yields features, not images")
            yield denormalize(x.float(), cfg["mean"], cfg["std"]).mul_(255), y
        return
    # The files decoded as for training (and cached under the training key).
    yield from dl.decoded_batches()


@torch.no_grad()
def tta_evaluate(learn, n: int = 4, beta: float | None = 0.25, seed: int = 0):
    """The validation loss and metrics of the TTA probabilities (`tta`), scored like
    `Learner.validate` scores the plain outputs: the loss and metrics see outputs whose
    activation is the averaged probabilities (log-probabilities; multi-label: logits).
    Returns ``{"valid_loss": ..., metric: ...}``."""
    if learn.task.name == "segmentation":
        raise SnugfitError("tta: for classification (segmentation predicts with flips instead)")
    probs, targets = tta(learn, n=n, beta=beta, seed=seed)
    ev = learn.task.evaluator(learn.loss_func, learn.metrics, learn.vocab)
    ev.update(learn.task.outputs_of(probs.float()), targets)
    loss, metrics = ev.result()
    return {"valid_loss": loss, **metrics}
