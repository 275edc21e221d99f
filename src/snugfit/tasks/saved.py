"""Which task a saved model was trained for, read from its ``snugfit.json``.

A segmentation model's file says ``"task": "segmentation"``; classification files
have no ``task`` field (they were written before there was a choice) and say
``multi_label`` (optional: the oldest files are single-label).

>>> task_from_config({"task": "segmentation", "loss": "dice_ce", "background": 0}).loss_name
'dice_ce'
>>> task_from_config({"multi_label": True, "threshold": 0.3}).threshold
0.3
"""

from __future__ import annotations

from snugfit.errors import SnugfitError
from snugfit.tasks.classification import MultiLabel, SingleLabel
from snugfit.tasks.segmentation import Segmentation
from snugfit.tasks.task import Task


def task_from_config(cfg: dict, where: str = "task") -> Task:
    """The task of a saved model's description, its fields checked (a file may come
    from someone else); ``where`` names the file in errors.

    ``task`` is ``"segmentation"`` or absent (classification); ``multi_label`` is
    optional (older files are single-label); a multi-label model has a
    ``threshold`` in [0, 1].
    """
    kind = cfg.get("task")
    if kind == "segmentation":
        return Segmentation.from_config(cfg, where)
    if kind is not None:
        raise SnugfitError(
            f"{where}: field 'task' must be \"segmentation\" or absent, got {kind!r}"
        )
    multi = cfg.get("multi_label", False)
    if not isinstance(multi, bool):
        raise SnugfitError(f"{where}: field 'multi_label' must be true or false")
    if not multi:
        return SingleLabel()
    t = cfg.get("threshold")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= 1:
        raise SnugfitError(f"{where}: field 'threshold' must be a number in [0, 1]")
    return MultiLabel(t)
