"""snugfit: fine-tune pretrained image classifiers and segmentation models that fit your
machine."""

from snugfit.app.config import TrainConfig
from snugfit.callbacks import EMA, Callback, CutMix, MixUp
from snugfit.data.loaders import ImageDataLoaders
from snugfit.data.segmentation import SegmentationDataLoaders
from snugfit.errors import NonFiniteLoss, SnugfitError, UnreadableImage
from snugfit.infer.interpret import ClassificationInterpretation
from snugfit.tasks import LabelSmoothingCrossEntropy, MultiLabel, Segmentation, SingleLabel
from snugfit.tasks.metrics import accuracy, accuracy_multi, error_rate, f1_samples
from snugfit.train.factory import (
    load_learner,
    segmentation_learner,
    unet_learner,
    vision_learner,
)
from snugfit.train.learner import Learner

__version__ = "0.1.0"

__all__ = [
    "EMA",
    "Callback",
    "ClassificationInterpretation",
    "CutMix",
    "ImageDataLoaders",
    "LabelSmoothingCrossEntropy",
    "Learner",
    "MixUp",
    "MultiLabel",
    "NonFiniteLoss",
    "Segmentation",
    "SegmentationDataLoaders",
    "SingleLabel",
    "SnugfitError",
    "TrainConfig",
    "UnreadableImage",
    "accuracy",
    "accuracy_multi",
    "error_rate",
    "f1_samples",
    "load_learner",
    "segmentation_learner",
    "unet_learner",
    "vision_learner",
]
