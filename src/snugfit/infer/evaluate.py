"""Forward passes without a graph: evaluation, outputs over a loader, predicting images.

Every inference path of a `Learner` (validation in the loop, `get_preds`,
`predict`, and through them TTA, precomputed features and batch prediction)
runs the model through `eval_forward`: in chunks of ``learn.eval_bs``, halved on
out-of-memory. This module also owns what predicting needs without training
data (`infer_config`) and turning outputs into probabilities and labels.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from snugfit import distributed
from snugfit.errors import SnugfitError, first_line
from snugfit.memory.oom import is_oom, release_memory
from snugfit.tasks.metrics import metric_name

log = logging.getLogger("snugfit")


def infer_config(learn) -> dict:
    """`Learner.infer_config`: classes, image transform and, multi-label, the threshold."""
    if learn.dls is None:
        cfg = dict(learn._infer)
    else:
        d = learn.dls
        cfg = {
            "vocab": list(d.vocab),
            "size": d.size,
            "crop_pct": d.crop_pct,
            "mean": list(d.mean),
            "std": list(d.std),
        }
    cfg["multi_label"] = learn.multi_label
    if learn.multi_label:
        cfg["threshold"] = learn.threshold
    return cfg


@torch.no_grad()
def get_preds(learn, dl=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw outputs and targets over a loader (the validation set by default)."""
    dl = learn.dls.valid if dl is None else dl
    learn.model.eval()
    outs, targs = [], []
    for xb, yb in dl:
        empty = len(xb) == 0  # a rank's empty shard of a batch, under torchrun
        outs.append(None if empty else learn._eval_forward(learn._input(xb)))
        targs.append(None if empty else yb)
    if distributed.active():  # every rank gets the whole set, in one process's order
        return distributed.gather_batches(outs, targs)
    outs, targs = [o for o in outs if o is not None], [t for t in targs if t is not None]
    if not outs:
        raise SnugfitError("the validation set yielded no images (all unreadable?)")
    return torch.cat(outs), torch.cat(targs)


def eval_forward(learn, x: torch.Tensor) -> torch.Tensor:
    """Outputs (float32) without a graph, in chunks of ``eval_bs``; halved on OOM."""
    while True:
        chunk = min(learn.eval_bs or len(x), len(x))
        try:
            with learn.autocast():
                return torch.cat([learn.net(c).float() for c in x.split(chunk)])
        except Exception as e:
            if not (learn.oom_recovery and is_oom(e)) or chunk == 1:
                raise
            message = first_line(e)
        release_memory(learn.device)
        learn.eval_bs = chunk // 2
        learn.oom_events.append({"phase": "eval", "from": chunk, "to": learn.eval_bs})
        learn.events.emit("oom", **learn.oom_events[-1], error=message)
        log.warning(f"out of memory in evaluation ({message}): chunks of {learn.eval_bs}")


def evaluate(learn, dl) -> tuple[float, dict[str, float]]:
    """The loss and metrics over ``dl``; under torchrun, over the whole set."""
    if learn.distributed:
        distributed.average_buffers(learn.model)  # BN statistics moved apart on the shards
    preds, targs = learn.get_preds(dl)
    if learn.distributed:  # means over the whole set from each rank's shard
        values = [learn.loss_func(preds, targs), *(m(preds, targs) for m in learn.metrics)]
        loss, *means = distributed.weighted_means(values, len(targs))
        return loss, {metric_name(m): v for m, v in zip(learn.metrics, means, strict=True)}
    loss = learn.loss_func(preds, targs).item()
    return loss, {metric_name(m): m(preds, targs).item() for m in learn.metrics}


@torch.no_grad()
def predict_many(learn, images: Sequence) -> tuple[list, torch.Tensor]:
    """`Learner.predict_many`: labels (a list per image, multi-label) and probabilities."""
    from snugfit.data.decode import prepare_for_predict

    cfg = learn.infer_config
    x = prepare_for_predict(images, cfg["size"], cfg["crop_pct"], cfg["mean"], cfg["std"])
    learn.model.eval()
    probs = learn.activation(learn._eval_forward(learn._input(x.to(learn.device)))).cpu()
    vocab = cfg["vocab"]
    if learn.multi_label:
        above = (probs > learn.threshold).tolist()
        return [[c for c, on in zip(vocab, row, strict=True) if on] for row in above], probs
    return [vocab[i] for i in probs.argmax(dim=-1).tolist()], probs


def activation(outputs: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Probabilities from model outputs: softmax, or sigmoid for multi-label models."""
    return outputs.sigmoid() if multi_label else outputs.softmax(dim=-1)
