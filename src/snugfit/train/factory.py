"""Making learners: for transfer learning from a timm architecture (classification,
`vision_learner`; segmentation, `segmentation_learner` / `unet_learner`), or for
prediction from a saved model folder (`load_learner`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from snugfit import models
from snugfit.errors import SnugfitError
from snugfit.saving import read_model_folder
from snugfit.sizes import as_hw, format_size
from snugfit.train.learner import Learner


def vision_learner(
    dls,
    arch: str | nn.Module,
    pretrained: bool = True,
    weights=None,
    metrics: Sequence | None = None,
    head_init: str = "auto",
    **kwargs,
) -> Learner:
    """A Learner for transfer learning from a timm architecture.

    The classifier is replaced for ``dls``'s classes, the data is normalised with
    the model's own pretrained mean/std and validated with its crop fraction
    unless ``dls`` was given one (``learn.dls`` is ``dls`` with the model's
    preprocessing; ``dls`` itself is left as it is), and the body is frozen when
    the model starts from pretrained weights (``fine_tune`` unfreezes it).

    Args:
        dls: the `ImageDataLoaders`.
        arch: a timm model name (e.g. "tf_efficientnet_lite0") or an ``nn.Module``.
        pretrained: start from pretrained weights (timm's hub unless ``weights``).
        weights: a local weights file (timm state dict in safetensors or .pth, or
            an efficientnet-pytorch state dict, converted by tensor order).
        metrics: metric callables or names; None: the task's defaults ("error_rate";
            multi-label: "accuracy_multi" and "f1_samples").
        head_init: "auto" starts the new head from the pretrained ImageNet
            classifier's rows when every class is an ImageNet class (e.g. ants,
            bees); "random" always starts from a fresh head. Multi-label data
            always gets a fresh head: ImageNet's rows are logits of a softmax over
            1000 classes, not of independent sigmoids.
        **kwargs: passed to `Learner` (loss_func, opt, wd, cbs, micro_bs, ...).
    """
    task = dls.task
    metrics = task.default_metrics if metrics is None else metrics
    vocab = dls.vocab if task.imagenet_head else None
    model = models.create_model(
        arch, dls.c, pretrained=pretrained, weights=weights, vocab=vocab, head_init=head_init
    )
    _check_size(model, arch, dls.preprocessing.train_input)
    cfg = models.model_config(model)
    crop_pct = dls.crop_pct if getattr(dls, "crop_pct_given", False) else cfg["crop_pct"]
    pre = dls.preprocessing.replace(mean=cfg["mean"], std=cfg["std"], crop_pct=crop_pct)
    name = arch if isinstance(arch, str) else None
    learn = Learner(dls.with_preprocessing(pre), model, metrics=metrics, arch=name, **kwargs)
    if pretrained or weights is not None:
        learn.freeze()
    return learn


def _check_size(model: nn.Module, arch, size) -> None:
    """One clear line when the model takes one input size only and the data has another."""
    fixed = models.fixed_input_size(model)
    if fixed is not None and as_hw(size) != fixed:
        name = arch if isinstance(arch, str) else type(model).__name__
        raise SnugfitError(
            f"size: {name} takes {format_size(fixed)} images only (its position embedding "
            f"is fixed), not {format_size(size)}; use size={format_size(fixed)} (--size "
            f"{format_size(fixed)}), or a convolutional model for other sizes"
        )


def segmentation_learner(
    dls,
    arch: str,
    decoder: str = "unet",
    pretrained: bool = True,
    weights=None,
    metrics: Sequence | None = None,
    **kwargs,
) -> Learner:
    """A Learner for segmentation: a segmentation-models-pytorch decoder on a timm encoder.

    The encoder starts from ``arch``'s pretrained ImageNet weights (timm's hub, the
    packaged EfficientNet-Lite0, or a local ``weights`` file in timm or
    efficientnet-pytorch format, every shape checked), the decoder and head from
    scratch; the data is normalised with the encoder's mean/std (``learn.dls`` is a
    copy of ``dls`` with that preprocessing), and the encoder is frozen when it starts
    pretrained (``fine_tune`` unfreezes it). Layer groups: the encoder's stages, then
    the decoder and head. Images of any size go through (padded to the encoder's
    output stride, the logits cropped back).

    Args:
        dls: `SegmentationDataLoaders`.
        arch: a timm encoder name, e.g. "resnet34" or "tf_efficientnet_lite0".
        decoder: "unet", "fpn" or "deeplabv3plus".
        pretrained, weights: as for `vision_learner`.
        metrics: metric names or callables; None: the task's (dice, iou, pixel_accuracy).
        **kwargs: passed to `Learner`.
    """
    metrics = dls.task.default_metrics if metrics is None else metrics
    model = models.create_segmentation_model(
        arch, dls.c, decoder=decoder, pretrained=pretrained, weights=weights
    )
    cfg = models.segmentation_config(model)
    pre = dls.preprocessing.replace(mean=cfg["mean"], std=cfg["std"])  # crop_pct stays
    learn = Learner(dls.with_preprocessing(pre), model, metrics=metrics, arch=arch, **kwargs)
    if pretrained or weights is not None:
        learn.freeze()
    return learn


def unet_learner(dls, arch: str, **kwargs) -> Learner:
    """fastai's name: `segmentation_learner` with a UNet decoder."""
    return segmentation_learner(dls, arch, decoder="unet", **kwargs)


def learner_for(dls, arch: str, *, decoder: str = "unet", **kwargs) -> Learner:
    """The learner of ``dls``'s task: `segmentation_learner` (with ``decoder``) for
    segmentation loaders, `vision_learner` for the others."""
    if dls.task.name == "segmentation":
        kwargs.pop("head_init", None)  # a decoder has no ImageNet rows to start from
        return segmentation_learner(dls, arch, decoder=decoder, **kwargs)
    return vision_learner(dls, arch, **kwargs)


def load_learner(path, device: str | torch.device | None = None) -> Learner:
    """Rebuild a Learner for prediction from a folder written by `Learner.save` (or the run
    folder of ``snugfit train`` holding it in ``model/``)."""
    model, meta = read_model_folder(path)
    infer = {k: v for k, v in meta.items() if k not in ("format_version", "arch", "decoder")}
    learn = Learner(None, model, arch=meta["arch"], infer=infer)
    if device is not None:
        from snugfit.data.loaders import resolve_device

        learn.to(resolve_device(device))
    return learn
