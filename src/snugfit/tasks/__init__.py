"""Tasks: what differs between single-label and multi-label classification and
segmentation: targets, loss, metrics, streaming evaluation, activation, decoding
predictions, what is saved.

Owns the task seam (`Task`), the evaluators that measure a set one batch at a time
(`Evaluator`), the metrics, label smoothing and the segmentation losses. May import
``snugfit.errors``, torch and numpy only, so that data, training, prediction and
saving can all use it.
"""

from snugfit.tasks.classification import MultiLabel, SingleLabel
from snugfit.tasks.evaluation import ConcatEvaluator, Evaluator
from snugfit.tasks.losses import LabelSmoothingCrossEntropy, smooth_labels
from snugfit.tasks.metrics import accuracy, accuracy_multi, error_rate, f1_samples, metric_name
from snugfit.tasks.saved import task_from_config
from snugfit.tasks.seg_losses import DiceCrossEntropy, SegmentationCrossEntropy
from snugfit.tasks.seg_metrics import VOID, confusion_matrix, dice, iou, pixel_accuracy
from snugfit.tasks.segmentation import Segmentation, SegmentationEvaluator
from snugfit.tasks.task import Task

__all__ = [
    "VOID",
    "ConcatEvaluator",
    "DiceCrossEntropy",
    "Evaluator",
    "LabelSmoothingCrossEntropy",
    "MultiLabel",
    "Segmentation",
    "SegmentationCrossEntropy",
    "SegmentationEvaluator",
    "SingleLabel",
    "Task",
    "accuracy",
    "accuracy_multi",
    "confusion_matrix",
    "dice",
    "error_rate",
    "f1_samples",
    "iou",
    "metric_name",
    "pixel_accuracy",
    "smooth_labels",
    "task_from_config",
]
