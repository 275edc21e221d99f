"""timm encoders inside segmentation models: how they relate to timm's classifier of
the same architecture.

A segmentation encoder is a timm ``features_only`` model: the classifier's body
without its head (and, for EfficientNets, without ``conv_head``/``bn2``), whose
feature wrapper may flatten the first level of ``nn.Sequential`` containers into its
own names (``stages.0.blocks`` becomes ``stages_0.blocks``). `encoder_key_map`
pairs each encoder tensor with the classifier's, which lets pretrained weights
(`copy_into_encoder`) and the classifier's ``group_matcher`` (`encoder_param_groups`)
serve the encoder. `encoder_blocks` finds the blocks activation checkpointing
recomputes one at a time.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import timm
import torch
from timm.models import group_parameters
from torch import Tensor, nn

from snugfit.errors import SnugfitError


def _flat(key: str) -> str:
    # The feature wrappers rename by joining path parts with "_"; comparing names with
    # every "." as "_" sees through that, and a collision is refused below.
    return key.replace(".", "_")


def encoder_key_map(encoder_keys: list[str], classifier_keys: list[str]) -> dict[str, str]:
    """For each encoder key, the classifier key of the same tensor; keys without one are left out.

    >>> encoder_key_map(["stages_0.blocks.0.weight"], ["stages.0.blocks.0.weight", "head.fc.weight"])
    {'stages_0.blocks.0.weight': 'stages.0.blocks.0.weight'}

    Raises:
        SnugfitError: If two classifier keys read the same once flattened (never seen
            in timm, but then the pairing would be a guess).
    """
    by_flat: dict[str, str] = {}
    for key in classifier_keys:
        other = by_flat.setdefault(_flat(key), key)
        if other != key:
            raise SnugfitError(f"classifier keys {other} and {key} cannot be told apart")
    return {k: by_flat[_flat(k)] for k in encoder_keys if _flat(k) in by_flat}


def copy_into_encoder(encoder: nn.Module, classifier: nn.Module, source: str) -> None:
    """Copy the classifier's weights into the encoder, every tensor present and shaped alike.

    Args:
        encoder: The timm ``features_only`` model (``model.encoder.model``).
        classifier: timm's full model of the same architecture, weights loaded.
        source: Where the weights come from, for error messages (a file name).

    Raises:
        SnugfitError: Naming ``source`` and the first encoder tensor the classifier
            lacks or has in another shape.
    """
    dst = encoder.state_dict()
    src = classifier.state_dict()
    pairs = encoder_key_map(list(dst), list(src))
    state: dict[str, Tensor] = {}
    for key, value in dst.items():
        if key not in pairs:
            raise SnugfitError(
                f"{source}: the encoder's tensor {key} has no counterpart in "
                f"{type(classifier).__name__}'s weights"
            )
        found = src[pairs[key]]
        if found.shape != value.shape:
            raise SnugfitError(
                f"{source}: tensor {pairs[key]} has shape {tuple(found.shape)} "
                f"but the encoder's {key} expects {tuple(value.shape)}"
            )
        state[key] = found
    encoder.load_state_dict(state, strict=True)


@functools.lru_cache(maxsize=32)
def _classifier_groups(arch: str) -> tuple[dict[str, int], Mapping | None]:
    """Group index of each classifier parameter (coarse ``group_matcher``) and the matcher."""
    try:
        with torch.device("meta"):  # names and shapes only: no memory, no init time
            classifier = timm.create_model(arch, pretrained=False)
    except Exception:  # a model that cannot be built on "meta"
        classifier = timm.create_model(arch, pretrained=False)
    matcher_fn = getattr(classifier, "group_matcher", None)
    if not callable(matcher_fn):
        return {}, None
    matcher = matcher_fn(coarse=True)
    groups = group_parameters(classifier, matcher)
    index = {name: i for i, gid in enumerate(sorted(groups)) for name in groups[gid]}
    return index, matcher


def encoder_param_groups(
    encoder: nn.Module, arch: str
) -> list[tuple[str | None, list[str]]] | None:
    """The encoder's parameter names split by the classifier's coarse ``group_matcher``.

    Returns:
        Per group, in order, one of the classifier's parameter names in it (for naming
        the group with the matcher) and the encoder's parameter names; or None when the
        architecture has no group matcher. Encoder parameters the matcher leaves out
        join the last group.
    """
    index, matcher = _classifier_groups(arch)
    if matcher is None:
        return None
    names = [n for n, _ in encoder.named_parameters()]
    to_classifier = encoder_key_map(names, list(index))
    buckets: dict[int, list[str]] = {}
    for name in names:
        i = index[to_classifier[name]] if name in to_classifier else max(index.values())
        buckets.setdefault(i, []).append(name)
    groups: list[tuple[str | None, list[str]]] = []
    for i in sorted(buckets):
        first = to_classifier.get(buckets[i][0])
        groups.append((first, buckets[i]))
    return groups


def classifier_matcher(arch: str) -> Mapping | None:
    """The coarse ``group_matcher`` of timm's classifier ``arch`` (None without one)."""
    return _classifier_groups(arch)[1]


_CONTAINERS = (nn.Sequential, nn.ModuleList)


def encoder_blocks(encoder: nn.Module) -> list[nn.Module]:
    """The blocks of the encoder's stages: what checkpointing recomputes one at a time.

    A stage is a top-level child of the feature model that is an ``nn.Sequential``
    (ResNet's ``layer1``; EfficientNet's ``blocks``, a sequence of stages) or holds
    one as ``.blocks`` (ConvNeXt, Swin); its blocks are the innermost non-container
    children made of layers of their own (so a stem written as a Sequential of
    single layers is not checkpointed). Stems, pools and stages of other shapes
    (RegNet's, DenseNet's) are not checkpointed.
    """
    units: list[nn.Module] = []
    for child in encoder.children():
        inner = getattr(child, "blocks", None)
        stage = inner if isinstance(inner, _CONTAINERS) else child
        if isinstance(stage, _CONTAINERS):
            units.extend(_leaves(stage))
    return [u for u in units if worth_checkpointing(u) and any(True for _ in u.children())]


def _leaves(container: nn.Module) -> list[nn.Module]:
    out: list[nn.Module] = []
    for child in container.children():
        out.extend(_leaves(child) if isinstance(child, _CONTAINERS) else [child])
    return out


def worth_checkpointing(module: nn.Module) -> bool:
    """Has parameters (recomputing a module without saves nothing) and does not work in
    place (checkpointed alone, it would alter the input saved for its recomputation)."""
    has_params = any(True for _ in module.parameters())
    return has_params and getattr(module, "inplace", False) is not True
