"""Models: creation, weight loading and conversion, layer groups, activation checkpointing,
for classifiers and segmentation models (smp decoders on timm encoders).

Owns everything that knows a network's structure (timm's model contract: heads,
``group_matcher``, ``set_grad_checkpointing``; smp's encoder, decoder and head). May
import ``snugfit.errors``, torch, timm, huggingface_hub (timm's hub client: `hub`),
segmentation-models-pytorch and safetensors; nothing else of snugfit.
"""

from snugfit.models.checkpointing import checkpoint_units, model_stages, set_grad_checkpointing
from snugfit.models.create import (
    PACKAGED_ARCH,
    create_model,
    fixed_input_size,
    imagenet_rows,
    model_config,
    packaged_lite0_weights,
    pretrained_timm_model,
)
from snugfit.models.fusion import fold_batchnorm
from snugfit.models.groups import (
    batchnorm_to_eval,
    freeze_groups,
    group_names,
    is_cnn,
    is_norm,
    layer_groups,
    norm_and_bias_param_names,
)
from snugfit.models.segmentation import (
    SegmentationModel,
    create_segmentation_model,
    is_segmentation_model,
    segmentation_config,
)
from snugfit.models.shift import batchnorm_shift
from snugfit.models.specs import class_rows, has_classifier, rebuild, spec
from snugfit.models.weights import convert_by_order, load_weights

__all__ = [
    "PACKAGED_ARCH",
    "SegmentationModel",
    "batchnorm_shift",
    "batchnorm_to_eval",
    "checkpoint_units",
    "class_rows",
    "convert_by_order",
    "create_model",
    "create_segmentation_model",
    "fixed_input_size",
    "fold_batchnorm",
    "freeze_groups",
    "group_names",
    "has_classifier",
    "imagenet_rows",
    "is_cnn",
    "is_norm",
    "is_segmentation_model",
    "layer_groups",
    "load_weights",
    "model_config",
    "model_stages",
    "norm_and_bias_param_names",
    "packaged_lite0_weights",
    "pretrained_timm_model",
    "rebuild",
    "segmentation_config",
    "set_grad_checkpointing",
    "spec",
]
