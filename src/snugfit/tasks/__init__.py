"""Tasks: what differs between single-label and multi-label classification (and, next,
segmentation): targets, loss, metrics, streaming evaluation, activation, decoding
predictions, what is saved.

Owns the task seam (`Task`) and the evaluators that measure a set one batch at a time
(`Evaluator`). May import ``snugfit.errors``, torch and numpy only, so
that data, training, prediction and saving can all use it.
"""

from snugfit.tasks.classification import MultiLabel, SingleLabel, task_from_config
from snugfit.tasks.evaluation import ConcatEvaluator, Evaluator
from snugfit.tasks.metrics import accuracy, accuracy_multi, error_rate, f1_samples, metric_name
from snugfit.tasks.task import Task

__all__ = [
    "ConcatEvaluator",
    "Evaluator",
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
