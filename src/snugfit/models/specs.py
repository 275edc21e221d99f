"""What a saved model file needs to rebuild its network, and the layer whose rows are
the classes.

A classifier is described by its timm ``arch``; a segmentation model by its encoder's
``arch`` and its ``decoder``. `spec` writes that description, `rebuild` makes an
untrained network of it (the weights come from the file), `class_rows` names the
parameter with one row per class (checked against the saved class count), and
`has_classifier` says whether the head can train alone on precomputed features.
"""

from __future__ import annotations

from torch import nn

from snugfit.models.create import create_model
from snugfit.models.segmentation import create_segmentation_model, is_segmentation_model


def spec(model: nn.Module, arch: str | None) -> dict:
    """``{"arch": ...}``, and ``"decoder"`` for a segmentation model."""
    if is_segmentation_model(model):
        return {"arch": model.arch, "decoder": model.decoder_name}
    return {"arch": arch}


def rebuild(info: dict, n_classes: int) -> nn.Module:
    """An untrained network of the architecture ``info`` (a `spec`) names."""
    if info.get("decoder") is not None:
        return create_segmentation_model(
            info["arch"], n_classes, decoder=info["decoder"], pretrained=False
        )
    return create_model(info["arch"], n_classes, pretrained=False)


def has_classifier(model: nn.Module) -> bool:
    """Whether the model ends in a classifier fed by pooled features (``get_classifier``):
    the head that trains alone on precomputed features. A segmentation decoder needs
    the encoder's skip features, so it cannot."""
    return hasattr(model, "get_classifier") and not is_segmentation_model(model)


def class_rows(model: nn.Module) -> str | None:
    """The name of the parameter with one row per class, or None when there is no
    single such layer."""
    if is_segmentation_model(model):
        head = model.segmentation_head[0]
    elif hasattr(model, "get_classifier"):
        head = model.get_classifier()
    else:
        return None
    weight = getattr(head, "weight", None)
    names = {id(p): n for n, p in model.named_parameters()}
    return names.get(id(weight)) if weight is not None else None
