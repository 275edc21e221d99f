"""Tasks: what differs between single-label and multi-label classification (and, next,
segmentation): targets, loss, metrics, activation, decoding predictions, what is saved.

Owns the task seam (`Task`). May import ``snugfit.errors``, torch and numpy only, so
that data, training, prediction and saving can all use it.
"""

from snugfit.tasks.classification import MultiLabel, SingleLabel, task_from_config
from snugfit.tasks.metrics import accuracy, accuracy_multi, error_rate, f1_samples, metric_name
from snugfit.tasks.task import Task

__all__ = [
    "MultiLabel",
    "SingleLabel",
    "Task",
    "accuracy",
    "accuracy_multi",
    "error_rate",
    "f1_samples",
    "metric_name",
    "task_from_config",
]
