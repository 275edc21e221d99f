"""Activation checkpointing: a model's stages, and recomputing their activations in backward.

timm models have ``set_grad_checkpointing``; other models get a generic fallback that
checkpoints each child of their stages (`model_stages`). A segmentation model
checkpoints each block of its encoder's stages and of its decoder. The memory planner
uses the same units (`checkpoint_units`) to predict what checkpointing keeps.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from snugfit.models.encoders import encoder_blocks
from snugfit.models.segmentation import decoder_blocks, is_segmentation_model


def model_stages(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a network, over which activation checkpointing works.

    timm models: the children of ``model.blocks`` (EfficientNet stages, ViT blocks),
    ``model.stages`` (ConvNeXt) or ``model.layers``, or ``[layer1, ..., layer4]``
    (ResNet). Other models: the children of their largest ``nn.Sequential`` or
    ``nn.ModuleList`` by parameter count. Returns ``[]`` when there is none.
    A segmentation model: its `checkpoint_units`.
    """
    if is_segmentation_model(model):
        return checkpoint_units(model)
    for attr in ("blocks", "stages", "layers"):
        seq = getattr(model, attr, None)
        if isinstance(seq, (nn.Sequential, nn.ModuleList)) and len(seq) > 0:
            return list(seq)
    layers = [getattr(model, f"layer{i}", None) for i in range(1, 5)]
    layers = [m for m in layers if isinstance(m, nn.Module)]
    if layers:
        return layers

    def size(m: nn.Module) -> tuple[int, int]:
        # Ties (a Sequential wrapping one Sequential) go to the one with more children.
        return sum(p.numel() for p in m.parameters()), len(m)

    containers = [m for m in model.modules() if isinstance(m, (nn.Sequential, nn.ModuleList))]
    containers = [m for m in containers if len(m) > 0]
    return list(max(containers, key=size)) if containers else []


def checkpoint_units(model: nn.Module) -> list[nn.Module]:
    """The modules activation checkpointing recomputes one at a time: the blocks of each stage.

    timm checkpoints block by block (``checkpoint_seq(..., flatten=True)`` over ResNet
    layers and EfficientNet stages, each ViT block, each block of a ConvNeXt stage), and
    the generic fallback checkpoints each child of a stage; so the units are the
    children of stages that are containers, the ``blocks`` of stages that have them,
    and otherwise the stages themselves.

    A segmentation model: the blocks of its encoder's stages (`encoder_blocks`), then
    the decoder's (`decoder_blocks`); each is checkpointed as a whole.
    """
    if is_segmentation_model(model):
        return encoder_blocks(model.encoder.model) + decoder_blocks(model)
    units: list[nn.Module] = []
    for stage in model_stages(model):
        blocks = getattr(stage, "blocks", None)
        if isinstance(stage, (nn.Sequential, nn.ModuleList)) and len(stage) > 0:
            units.extend(stage)
        elif isinstance(blocks, (nn.Sequential, nn.ModuleList)) and len(blocks) > 0:
            units.extend(blocks)
        else:
            units.append(stage)
    return units


class _CheckpointedSequential(nn.Sequential):
    """An ``nn.Sequential`` that recomputes each child's activations during backward.

    Set as the ``__class__`` of an existing ``nn.Sequential`` by `set_grad_checkpointing`:
    the module keeps its children and state-dict keys, only ``forward`` changes.
    """

    def forward(self, input):
        for module in self:
            if torch.is_grad_enabled():
                # Non-reentrant: works with frozen inputs and keyword args, and is the
                # variant PyTorch recommends. BatchNorm running stats update twice.
                input = checkpoint(module, input, use_reentrant=False)
            else:
                input = module(input)
        return input


_CHECKPOINTED: dict[type, type] = {}


def _checkpointed_class(cls: type) -> type:
    """A subclass of ``cls`` whose forward recomputes its activations during backward
    (one per class, so that modules of one class share it)."""
    if cls not in _CHECKPOINTED:

        def forward(self, *args, **kwargs):
            run = super(sub, self).forward
            if not torch.is_grad_enabled():
                return run(*args, **kwargs)
            # Non-reentrant, as in _CheckpointedSequential.
            return checkpoint(run, *args, use_reentrant=False, **kwargs)

        sub = type(f"Checkpointed{cls.__name__}", (cls,), {"forward": forward})
        _CHECKPOINTED[cls] = sub
    return _CHECKPOINTED[cls]


def _set_unit_checkpointing(units: list[nn.Module], enable: bool) -> None:
    """Swap each unit's class to its checkpointed subclass (or back): its children,
    parameters and state-dict keys stay, only ``forward`` changes."""
    originals = {sub: cls for cls, sub in _CHECKPOINTED.items()}
    for unit in units:
        plain = originals.get(type(unit), type(unit))
        unit.__class__ = _checkpointed_class(plain) if enable else plain


def set_grad_checkpointing(model: nn.Module, enable: bool = True) -> str:
    """Turn activation checkpointing on or off.

    Uses timm's ``model.set_grad_checkpointing`` when the model has it. Otherwise every
    stage (`model_stages`) that is a plain ``nn.Sequential`` gets its class swapped
    to one that checkpoints each child; disabling swaps it back. A segmentation model
    gets each of its `checkpoint_units` swapped to a class that checkpoints it.

    Returns:
        ``"timm"``, ``"generic"``, or ``"none"`` when neither applies.
    """
    if is_segmentation_model(model):
        units = checkpoint_units(model)
        _set_unit_checkpointing(units, enable)
        return "generic" if units else "none"
    if hasattr(model, "set_grad_checkpointing"):
        try:
            model.set_grad_checkpointing(enable)
            return "timm"
        except (AssertionError, NotImplementedError):
            pass  # some timm models declare it but do not support it
    swap = (nn.Sequential, _CheckpointedSequential) if enable else (_CheckpointedSequential,)
    # Only exact nn.Sequential: swapping a subclass's class would drop its own forward.
    stages = [s for s in model_stages(model) if type(s) in swap]
    for stage in stages:
        stage.__class__ = _CheckpointedSequential if enable else nn.Sequential
    return "generic" if stages else "none"
