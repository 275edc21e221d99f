"""Forward passes without a graph: evaluation, outputs over a loader, predicting images.

Evaluation streams: each batch's outputs go to the task's evaluator
(`snugfit.tasks.evaluation`) as they come, so a set whose outputs would not fit in
memory together (segmentation logits) is measured all the same.

Every inference path of a `Learner` (validation in the loop, `get_preds`,
`predict`, and through them TTA, precomputed features and batch prediction)
runs the model through ``learn.eval_outputs``: in chunks of ``learn.eval_bs``,
halved on out-of-memory. Turning outputs into probabilities and labels is the
task's (``learn.task``, `snugfit.tasks`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from snugfit import distributed
from snugfit.data.decode import prepare_for_predict
from snugfit.errors import SnugfitError
from snugfit.infer.predict_seg import predict_masks
from snugfit.tasks.evaluation import Evaluator

log = logging.getLogger("snugfit")


@torch.no_grad()
def get_preds(learn, dl=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw outputs and targets over a loader (the validation set by default)."""
    dl = learn.dls.valid if dl is None else dl
    learn.model.eval()
    outs, targs = [], []
    for xb, yb in dl:
        empty = len(xb) == 0  # a rank's empty shard of a batch, under torchrun
        outs.append(None if empty else learn.eval_outputs(xb))
        targs.append(None if empty else yb)
    if distributed.active():  # every rank gets the whole set, in one process's order
        return distributed.gather_batches(outs, targs)
    outs, targs = [o for o in outs if o is not None], [t for t in targs if t is not None]
    if not outs:
        raise SnugfitError("the validation set yielded no images (all unreadable?)")
    return torch.cat(outs), torch.cat(targs)


@torch.no_grad()
def evaluate(learn, dl) -> tuple[float, dict[str, float]]:
    """The loss and metrics over ``dl``; under torchrun, over the whole set."""
    return evaluation(learn, dl).result()


@torch.no_grad()
def evaluation(learn, dl) -> Evaluator:
    """The task's `Evaluator` fed every batch of ``dl``, one at a time (no batch's
    outputs are kept unless the task keeps them); under torchrun each rank feeds its
    shards and the ranks' sums are added, so it covers the whole set on every rank.
    Its ``result()`` is `evaluate`'s; a task's evaluator may tell more (per class)."""
    if learn.distributed:
        distributed.average_buffers(learn.model)  # BN statistics moved apart on the shards
    learn.model.eval()
    ev = learn.task.evaluator(learn.loss_func, learn.metrics, learn.vocab)
    for xb, yb in dl:
        if len(xb):  # not a rank's empty shard of a batch, under torchrun
            ev.update(learn.eval_outputs(xb), yb)
    if learn.distributed:
        ev.load_sums(torch.tensor(distributed.reduce_sums(ev.sums().tolist()), dtype=torch.float64))
    if ev.n == 0:
        raise SnugfitError("the validation set yielded no images (all unreadable?)")
    return ev


@torch.no_grad()
def predict_many(learn, images: Sequence) -> tuple[list, torch.Tensor]:
    """`Learner.predict_many`: labels (a list per image, multi-label) and probabilities;
    a segmentation model: masks and per-pixel probabilities at each image's own size
    (lists: the sizes differ; `snugfit.infer.predict_seg`)."""
    if learn.task.name == "segmentation":
        return predict_masks(learn, images)
    pre = learn.preprocessing
    x = prepare_for_predict(images, pre.size, pre.crop_pct, pre.mean, pre.std)
    learn.model.eval()
    probs = learn.activation(learn.eval_outputs(x.to(learn.device))).cpu()
    return learn.task.labels(probs, learn.vocab), probs
