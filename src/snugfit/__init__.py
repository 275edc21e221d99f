"""snugfit: fine-tune pretrained image classifiers that fit your machine."""

from .callbacks import Callback
from .config import TrainConfig
from .data import ImageDataLoaders
from .errors import NonFiniteLoss, SnugfitError, UnreadableImage
from .learner import Learner, load_learner, vision_learner
from .metrics import accuracy, error_rate

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
    "error_rate",
    "load_learner",
    "vision_learner",
]
