"""Segmentation models: segmentation-models-pytorch decoders (UNet, FPN, DeepLabV3+) on
timm encoders, taking images of any size.

`create_segmentation_model` builds the smp model on the timm encoder ``tu-<arch>``
and fills the encoder with pretrained weights from timm's classifier of the same
architecture (a local file, the packaged Lite0, or the hub), every tensor checked.
The result is a `SegmentationModel`: smp's encoder, decoder and head, whose forward
pads each input up to a multiple of the encoder's output stride and crops the logits
back. `segmentation_config` gives the encoder's preprocessing.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from snugfit.errors import SnugfitError, first_line
from snugfit.models.create import check_arch_name, model_config, pretrained_timm_model
from snugfit.models.encoders import copy_into_encoder, worth_checkpointing

# snugfit's decoder names -> smp's model classes (by name: smp is imported when used).
DECODERS = {"unet": "Unet", "fpn": "FPN", "deeplabv3plus": "DeepLabV3Plus"}


class SegmentationModel(nn.Module):
    """An smp encoder-decoder whose forward takes images of any height and width.

    Inputs whose sides are not multiples of ``stride`` (the encoder's output stride:
    32, or 16 for DeepLabV3+) are padded at the bottom and right by reflection
    (by repeating the edge where the padding is as large as the side), and the
    logits are cropped back, so ``(N, 3, H, W)`` images give ``(N, n_classes, H, W)``
    logits.

    Its children, and so its state-dict keys, are those of smp's own model (a state
    dict of ``smp.Unet("tu-<arch>", classes=n)`` loads as is):

    - ``encoder.model.<key>``: the timm ``features_only`` encoder, e.g.
      ``encoder.model.layer1.0.conv1.weight`` (ResNet) or
      ``encoder.model.stages_0.blocks.0.conv_dw.weight`` (ConvNeXt);
    - ``decoder.<key>``: the decoder, e.g. ``decoder.blocks.0.conv1.0.weight`` (UNet);
    - ``segmentation_head.0.weight`` / ``.bias``: the final convolution to the classes.

    Attributes:
        arch: The timm architecture of the encoder.
        decoder_name: ``"unet"``, ``"fpn"`` or ``"deeplabv3plus"``.
        n_classes: Number of output channels (classes).
        stride: Input sides are padded up to a multiple of this.
    """

    def __init__(self, net: nn.Module, *, arch: str, decoder_name: str, n_classes: int):
        super().__init__()
        self.encoder = net.encoder
        self.decoder = net.decoder
        self.segmentation_head = net.segmentation_head
        self.arch = arch
        self.decoder_name = decoder_name
        self.n_classes = n_classes
        self.stride = int(net.encoder.output_stride)

    def fresh_modules(self) -> list[nn.Module]:
        """The parts built from scratch (decoder and head): their BatchNorm layers have
        no statistics to keep, so they train even at small micro-batches."""
        return [self.decoder, self.segmentation_head]

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        features = self.encoder(pad_to_multiple(x, self.stride))
        logits = self.segmentation_head(self.decoder(features))
        return logits[..., :h, :w]

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, decoder={self.decoder_name!r}, n_classes={self.n_classes}"


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Pad ``x``'s last two dims at the bottom and right up to multiples of ``multiple``.

    Reflection where it can (the padding is smaller than the side), else the edge
    repeated. Returns ``x`` itself when nothing is needed.

    >>> import torch
    >>> pad_to_multiple(torch.zeros(1, 3, 50, 70), 32).shape
    torch.Size([1, 3, 64, 96])
    """
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def is_segmentation_model(model: nn.Module) -> bool:
    """Whether ``model`` is a `SegmentationModel` (logits per pixel)."""
    return isinstance(model, SegmentationModel)


def create_segmentation_model(
    arch: str,
    n_classes: int,
    *,
    decoder: str = "unet",
    pretrained: bool = True,
    weights: str | Path | None = None,
) -> SegmentationModel:
    """Create a segmentation model on a timm encoder, ready for fine-tuning.

    Args:
        arch: A timm model name (e.g. ``"resnet34"``, ``"tf_efficientnet_lite0"``)
            that segmentation-models-pytorch can use as an encoder (``tu-<arch>``).
        n_classes: Number of classes, the logits' channels.
        decoder: ``"unet"``, ``"fpn"`` or ``"deeplabv3plus"``.
        pretrained: Without ``weights``: the encoder starts from timm's pretrained
            classifier of ``arch`` (from the hub; for ``tf_efficientnet_lite0`` the
            packaged weights when installed), else from random numbers. The decoder
            and head always start from random numbers.
        weights: A local weights file of timm's classifier ``arch``, in timm or
            efficientnet-pytorch format (see `load_weights`); its body is copied into
            the encoder, every tensor's shape checked. Takes precedence over
            ``pretrained``.

    Returns:
        A `SegmentationModel`: ``(N, 3, H, W)`` images of any size to
        ``(N, n_classes, H, W)`` logits.

    Raises:
        SnugfitError: One line on an unknown architecture or decoder (with close
            matches), an architecture smp cannot use as an encoder, a bad
            ``n_classes``, an unreadable or mismatching weights file, or hub failures.
    """
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1:
        raise SnugfitError(f"n_classes: expected a positive number of classes, got {n_classes!r}")
    if not isinstance(arch, str):
        raise SnugfitError(f"arch: expected a timm model name, got {type(arch).__name__}")
    decoder = check_decoder_name(decoder)
    check_arch_name(arch)
    model = SegmentationModel(
        _smp_model(arch, decoder, n_classes), arch=arch, decoder_name=decoder, n_classes=n_classes
    )
    if weights is not None or pretrained:
        source = str(weights) if weights is not None else f"timm's pretrained {arch}"
        copy_into_encoder(model.encoder.model, pretrained_timm_model(arch, weights), source)
    return model


def check_decoder_name(decoder: str) -> str:
    """The decoder's name in lower case, or a SnugfitError with the close matches."""
    name = str(decoder).lower()
    if name in DECODERS:
        return name
    close = difflib.get_close_matches(name, list(DECODERS), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else f"use one of {', '.join(DECODERS)}"
    raise SnugfitError(f"decoder: unknown decoder {decoder!r}; {hint}")


def _smp_model(arch: str, decoder: str, n_classes: int) -> nn.Module:
    """smp's model on ``tu-<arch>`` with a random encoder (weights never come from smp)."""
    import segmentation_models_pytorch as smp

    cls = getattr(smp, DECODERS[decoder])
    try:
        return cls(f"tu-{arch}", encoder_weights=None, in_channels=3, classes=n_classes)
    except Exception as e:  # smp and timm refuse encoders with several error types
        raise SnugfitError(
            f"arch {arch!r}: segmentation-models-pytorch cannot use it as a "
            f"{decoder} encoder ({first_line(e)})"
        ) from e


def segmentation_config(model: SegmentationModel) -> dict[str, Any]:
    """Preprocessing the encoder was pretrained with (`model_config` of the timm encoder),
    so that images are normalised as the encoder expects."""
    return model_config(model.encoder.model)


def decoder_blocks(model: SegmentationModel) -> list[nn.Module]:
    """The decoder's blocks: what checkpointing recomputes one at a time.

    The decoder's children with parameters, a ``ModuleList``'s elements taken one by
    one: UNet's five ``blocks``; FPN's ``p5``..``p2`` and four ``seg_blocks``;
    DeepLabV3+'s ``aspp``, ``block1`` and ``block2``. The segmentation head is left
    out (one small convolution).
    """
    units: list[nn.Module] = []
    for child in model.decoder.children():
        units.extend(child if isinstance(child, nn.ModuleList) else [child])
    return [u for u in units if worth_checkpointing(u)]
