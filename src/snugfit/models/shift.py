"""How unlike its pretraining data a batch looks to a pretrained body.

Each BatchNorm layer keeps the mean and variance of its inputs over the pretraining
data (ImageNet's, for timm's CNNs). `batchnorm_shift` compares them with the same
statistics of a batch of the user's images: per channel, the Kullback-Leibler
divergence of the batch's Gaussian from the stored one, averaged over the channels
and over the deepest third of the layers (the features the head reads; the first
layers see colours and edges, which every photo shares).

Measured on EfficientNet-Lite0 with its ImageNet weights (``bench/recipe.py``'s data,
`Learner.pretraining_shift`: 32 training images, not augmented; the same at bs 4):
hymenoptera photos at 224 px 0.09, at 128 px 0.13, at 96 px 0.20, at 64 px 0.44;
scikit-image texture patches at 64 px 0.40, at 128 px 0.27; digit scans at 64 px
0.77, at 128 px 0.46. At 1.5x those sizes, where `auto_fit` reads it (the size a
frozen body's head would see): hymenoptera 0.11 / 0.10 / 0.20, textures 0.27,
digits 0.49 / 0.48. The recipe (`snugfit.train.recipes`) reads it to decide
whether training the body can pay.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from snugfit.models.groups import fresh_module_ids


def batchnorm_shift(model: nn.Module, forward: Callable[[], object]) -> float | None:
    """The mean divergence (see the module docstring) of the inputs that ``forward()``
    sends through ``model``'s BatchNorm layers, in eval mode (pooled over every call
    ``forward`` makes, so chunking the images changes nothing); None for a model
    without BatchNorm (LayerNorm keeps no statistics of the pretraining data)."""
    layers = _pretrained_batchnorms(model)
    if not layers:
        return None
    deep = layers[-max(1, len(layers) // 3) :]
    moments = {id(layer): _Moments() for layer in deep}

    def measure(layer, inputs, _output) -> None:
        moments[id(layer)].add(inputs[0])

    hooks = [layer.register_forward_hook(measure) for layer in deep]
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            forward()
    finally:
        model.train(training)
        for hook in hooks:
            hook.remove()
    found = [_divergence(layer, moments[id(layer)]) for layer in deep if moments[id(layer)].n]
    return sum(found) / len(found) if found else None


class _Moments:
    """Per-channel count, sum and sum of squares of the inputs seen so far."""

    def __init__(self):
        self.n, self.sum, self.sq = 0, 0.0, 0.0

    def add(self, x: torch.Tensor) -> None:
        dims = [d for d in range(x.dim()) if d != 1]
        x = x.detach().double()
        self.n += x.numel() // x.shape[1]
        self.sum = self.sum + x.sum(dims)
        self.sq = self.sq + (x * x).sum(dims)

    def mean_var(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.sum / self.n
        return mean, (self.sq / self.n - mean * mean) * self.n / max(self.n - 1, 1)


def _pretrained_batchnorms(model: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers with running statistics, less those of the parts the
    model builds afresh (a segmentation decoder's: no pretraining to compare with)."""
    new = fresh_module_ids(model)
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        and m.track_running_stats
        and m.running_mean is not None
        and id(m) not in new
    ]


def _divergence(layer: nn.modules.batchnorm._BatchNorm, moments: _Moments) -> float:
    """KL(seen || stored), per channel, averaged over the channels."""
    mean, var = moments.mean_var()
    var = var.float() + layer.eps
    mean = mean.float()
    stored_mean, stored_var = layer.running_mean.float(), layer.running_var.float() + layer.eps
    ratio = var / stored_var
    kl = 0.5 * (ratio + (mean - stored_mean) ** 2 / stored_var - 1 - torch.log(ratio))
    return kl.mean().item()
