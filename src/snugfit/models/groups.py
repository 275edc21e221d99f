"""Layer groups (for freezing and discriminative learning rates), weight decay, BatchNorm.

`layer_groups` / `group_names` split a model into body groups (from timm's
``group_matcher``) plus the head as the last group (for a segmentation model: the
encoder's stages, then the decoder and head together); `freeze_groups` freezes a
prefix of them; `norm_and_bias_param_names` names the parameters that get no
weight decay; `batchnorm_to_eval` keeps frozen BatchNorm statistics put.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from timm.models import group_parameters
from torch import nn

from snugfit.errors import SnugfitError
from snugfit.models.encoders import classifier_matcher, encoder_param_groups
from snugfit.models.segmentation import SegmentationModel, is_segmentation_model

NamedParams = list[tuple[str, nn.Parameter]]


def layer_groups(model: nn.Module) -> list[NamedParams]:
    """Split the model's parameters into layer groups, head last.

    For timm models the body is split with ``model.group_matcher(coarse=True)``:
    stem, each stage, and possibly a final norm or neck group. The last group is
    always the head: exactly the parameters of ``model.get_classifier()``. Models
    without a group matcher get their body split into up to two groups by
    top-level children; their head is ``get_classifier()`` or the last ``nn.Linear``.

    A segmentation model (`is_segmentation_model`) is split into its encoder's
    groups, named and split as its timm classifier's body would be (the classifier's
    ``group_matcher``; two halves by top-level children without one), and one last
    group, ``"decoder+head"``: the decoder and the segmentation head. So freezing all
    groups but the last freezes exactly the encoder.

    Every parameter appears in exactly one group; empty groups are dropped.

    Args:
        model: The model to split.

    Returns:
        Per group, the ``(name, parameter)`` pairs in module order.

    Raises:
        SnugfitError: If no classifier with parameters can be found.
    """
    return [params for _, params in _named_groups(model)]


def group_names(model: nn.Module) -> list[str]:
    """Names of `layer_groups`, e.g. ``["stem", "stage1", ..., "head"]``."""
    return [name for name, _ in _named_groups(model)]


def _named_groups(model: nn.Module) -> list[tuple[str, NamedParams]]:
    if is_segmentation_model(model):
        return _segmentation_groups(model)
    head_ids = {id(p) for p in _head_module_params(model)}
    named = list(model.named_parameters())
    head = [(n, p) for n, p in named if id(p) in head_ids]
    body = [(n, p) for n, p in named if id(p) not in head_ids]

    matcher = getattr(model, "group_matcher", None)
    groups = (
        _timm_body_groups(model, body) if callable(matcher) else _fallback_body_groups(model, body)
    )
    groups = [(name, params) for name, params in groups if params]
    return [*groups, ("head", head)]


def _segmentation_groups(model: SegmentationModel) -> list[tuple[str, NamedParams]]:
    """The encoder's groups, then ``"decoder+head"``: everything outside the encoder."""
    prefix = "encoder.model."
    named = list(model.named_parameters())
    encoder = {n[len(prefix) :]: p for n, p in named if n.startswith(prefix)}
    split = encoder_param_groups(model.encoder.model, model.arch)
    if split is None:
        groups = _fallback_body_groups(model.encoder.model, list(encoder.items()))
    else:
        matcher = classifier_matcher(model.arch)
        groups = [
            (_group_kind(first, matcher) if first else "neck", [(n, encoder[n]) for n in names])
            for first, names in split
        ]
        groups = _number_names(groups)
    groups = [(name, [(prefix + n, p) for n, p in params]) for name, params in groups if params]
    rest = [(n, p) for n, p in named if not n.startswith(prefix)]
    return [*groups, ("decoder+head", rest)]


def _head_module_params(model: nn.Module) -> list[nn.Parameter]:
    """Parameters of the classifier: ``get_classifier()`` or else the last Linear."""
    if hasattr(model, "get_classifier"):
        clf = model.get_classifier()
        # Distilled models return (head, head_dist); both are classifiers.
        modules = clf if isinstance(clf, (tuple, list)) else [clf]
    else:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        modules = linears[-1:]
    params = [p for m in modules if isinstance(m, nn.Module) for p in m.parameters()]
    if not params:
        raise SnugfitError(
            f"model {type(model).__name__}: no classifier with parameters found "
            "(no get_classifier() and no nn.Linear, or num_classes=0)"
        )
    return params


def _timm_body_groups(model: nn.Module, body: NamedParams) -> list[tuple[str, NamedParams]]:
    """Body groups from timm's coarse group matcher, named from the matcher's keys."""
    matcher = model.group_matcher(coarse=True)
    by_name = dict(body)
    # group_parameters groups all named parameters; drop the head's from its groups.
    names_by_group = group_parameters(model, matcher)
    groups = []
    for lid in sorted(names_by_group):
        params = [(n, by_name[n]) for n in names_by_group[lid] if n in by_name]
        if params:
            groups.append((_group_kind(params[0][0], matcher), params))
    return _number_names(groups)


def _group_kind(param_name: str, matcher: Any) -> str:
    """Classify a group by its first parameter: "stem", "stage" or "neck".

    Mirrors the order in which timm tries the matcher's patterns: the first
    pattern that matches decides. Patterns with a suffix (timm's "after the last
    block" marker) and unmatched parameters belong to the neck.
    """
    if not isinstance(matcher, Mapping):
        return "group"
    for key, spec in matcher.items():
        if spec is None:
            continue
        specs = spec if isinstance(spec, (list, tuple)) else [(spec, None)]
        for pattern, suffix in specs:
            if re.match(pattern, param_name):
                if key == "stem":
                    return "stem"
                return "stage" if suffix is None else "neck"
    return "neck"


def _number_names(groups: list[tuple[str, NamedParams]]) -> list[tuple[str, NamedParams]]:
    """Number repeated kinds ("stage1", "stage2"); keep unique "stem"/"neck" as is."""
    counts: dict[str, int] = {}
    for kind, _ in groups:
        counts[kind] = counts.get(kind, 0) + 1
    seen: dict[str, int] = {}
    named = []
    for kind, params in groups:
        seen[kind] = seen.get(kind, 0) + 1
        numbered = kind == "stage" or counts[kind] > 1
        named.append((f"{kind}{seen[kind]}" if numbered else kind, params))
    return named


def _fallback_body_groups(model: nn.Module, body: NamedParams) -> list[tuple[str, NamedParams]]:
    """Split the body into two halves by top-level children (like fastai's resnet split)."""
    children = [
        name for name, child in model.named_children() if any(True for _ in child.parameters())
    ]
    body_children = [c for c in children if any(n.startswith(f"{c}.") for n, _ in body)]
    if len(body_children) < 2:
        return [("body", body)]
    second = set(body_children[len(body_children) // 2 :])
    first_half = [(n, p) for n, p in body if n.split(".", 1)[0] not in second]
    second_half = [(n, p) for n, p in body if n.split(".", 1)[0] in second]
    return [("body1", first_half), ("body2", second_half)]


def is_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a normalisation layer (BatchNorm, LayerNorm, GroupNorm, ...)."""
    if isinstance(module, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)):
        return True
    # timm's own norms (LayerNorm2d, BatchNormAct2d, RmsNorm, ...) mostly subclass the
    # above; the class name catches the rest.
    return "Norm" in type(module).__name__


def norm_and_bias_param_names(model: nn.Module) -> set[str]:
    """Names of parameters that should get no weight decay.

    These are the parameters owned directly by normalisation layers (`is_norm`),
    all biases, and any other 0-d/1-d parameter (e.g. layer-scale gammas).
    """
    names = set()
    for mod_name, module in model.named_modules():
        if is_norm(module):
            # Only the layer's own parameters: a norm-named wrapper's children may be
            # Linear layers that do need decay.
            for p_name, _ in module.named_parameters(recurse=False):
                names.add(f"{mod_name}.{p_name}" if mod_name else p_name)
    for name, param in model.named_parameters():
        if param.ndim <= 1 or name.endswith("bias"):
            names.add(name)
    return names


def is_cnn(model: nn.Module) -> bool:
    """More than one 2-d convolution: a CNN (a ViT has just its patch embedding)."""
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    return convs > 1


def freeze_groups(groups: Sequence[NamedParams], n: int) -> int:
    """Freeze layer groups ``[:n]`` (``n < 0`` counts from the end); returns ``n`` >= 0."""
    n_groups = len(groups)
    if n < 0:
        n += n_groups
    if not 0 <= n < n_groups:
        raise SnugfitError(f"freeze_to: n must be in [-{n_groups}, {n_groups - 1}], got {n}")
    for i, group in enumerate(groups):
        for _, p in group:
            p.requires_grad_(i >= n)
    return n


def fresh_module_ids(model: nn.Module) -> set[int]:
    """The ``id`` of every module in the parts ``model`` builds from scratch
    (``fresh_modules()``, such as a segmentation decoder): none for a classifier."""
    fresh = getattr(model, "fresh_modules", list)()
    return {id(m) for part in fresh for m in part.modules()}


def batchnorm_to_eval(model: nn.Module, everywhere: bool = False) -> int:
    """Put frozen BatchNorm layers (with ``everywhere``, all but those of parts the model
    builds without statistics) in eval mode, so they use and keep their running
    statistics; returns the number of trainable ones.

    A part built from scratch, such as a segmentation decoder (``fresh_modules()``),
    has no statistics to keep: its BatchNorm layers train at any micro-batch.
    """
    new = fresh_module_ids(model)
    trainable = 0
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            frozen = m.weight is not None and not m.weight.requires_grad
            trainable += not frozen
            if frozen or (everywhere and id(m) not in new):
                m.eval()
    return trainable
