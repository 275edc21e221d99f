"""snugfit: fine-tune pretrained image classifiers that fit your machine."""

from .callbacks import Callback
from .config import TrainConfig
from .data import ImageDataLoaders
from .errors import NonFiniteLoss, SnugfitError, UnreadableImage
from .learner import Learner, load_learner, vision_learner
from .metrics import accuracy, accuracy_multi, error_rate, f1_samples

__version__ = "0.1.0"

__all__ = [
    "Callback",
    "ImageDataLoaders",
    "Learner",
    "NonFiniteLoss",
    "SnugfitError",
    "TrainConfig",
    "UnreadableImage",
    "accuracy",
    "accuracy_multi",
    "error_rate",
    "f1_samples",
    "load_learner",
    "vision_learner",
]
