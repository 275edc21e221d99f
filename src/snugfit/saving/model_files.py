"""A model saved for prediction: safetensors weights + a JSON description.

``Learner.save(path)`` writes ``path/model.safetensors`` and ``path/snugfit.json``
(architecture, classes, image size, crop and normalisation; ``multi_label`` and,
for multi-label models, the ``threshold`` of `predict`): enough to predict
with no training data, and nothing is pickled. `read_model_folder` (used by
``load_learner``, ``snugfit predict`` and ``snugfit export``) validates the JSON
(types, class count against the weights) before building the model; it takes a run
folder of ``snugfit train`` too (`model_folder`: its ``model/``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from safetensors.torch import load_model, save_model
from torch import nn

from snugfit import models
from snugfit.errors import SnugfitError
from snugfit.saving.atomic import atomic_write
from snugfit.saving.disk import writing
from snugfit.tasks import task_from_config

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
META_FILE = "snugfit.json"
# Where ``snugfit train --out RUN`` saves its model (``RUN/model``, `snugfit.app.run_folder`).
RUN_MODEL = "model"


def write_model_folder(path, model: nn.Module, info: dict) -> Path:
    """Write ``model``'s weights and ``info`` (``arch``, the classes, preprocessing and
    task settings) into the folder ``path``.

    Each file is written atomically: a run killed while saving leaves the previous
    files (or none), never a truncated one; a failed write raises `WriteError`.
    """
    path = Path(path)
    with writing(path):
        path.mkdir(parents=True, exist_ok=True)
    atomic_write(path / WEIGHTS_FILE, lambda tmp: save_model(model, str(tmp)))
    meta = {"format_version": FORMAT_VERSION, **info}
    atomic_write(path / META_FILE, lambda tmp: tmp.write_text(json.dumps(meta, indent=2)))
    return path


def model_folder(path) -> Path:
    """The model folder ``path`` names: ``path`` itself when it holds ``snugfit.json``
    (``Learner.save``), else the ``model/`` folder of a run folder (``snugfit train
    --out``), so that commands take either.

    Raises:
        SnugfitError: Neither holds ``snugfit.json``.
    """
    path = Path(path)
    if not (path / META_FILE).is_file() and (path / RUN_MODEL / META_FILE).is_file():
        return path / RUN_MODEL
    if not (path / META_FILE).is_file():
        raise SnugfitError(
            f"{path / META_FILE}: not found; expected a folder written by learn.save(), or "
            f"the --out folder of snugfit train (with {RUN_MODEL}/{META_FILE})"
        )
    return path


def read_model_folder(path) -> tuple[nn.Module, dict]:
    """The model (on the CPU) and its checked description from a folder written by
    `write_model_folder` (``Learner.save``), or the run folder holding it (`model_folder`)."""
    path = model_folder(path)
    meta_file, weights_file = path / META_FILE, path / WEIGHTS_FILE
    if not weights_file.is_file():
        raise SnugfitError(f"{weights_file}: not found; expected a folder written by learn.save()")
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SnugfitError(f"{meta_file}: not valid JSON ({e})") from None
    _check_meta(meta, meta_file)
    if meta.get("decoder") is not None and not isinstance(meta["decoder"], str):
        raise SnugfitError(f"{meta_file}: field 'decoder' must be a decoder name")
    model = models.rebuild(meta, len(meta["vocab"]))
    _check_classes(model, weights_file, len(meta["vocab"]), meta_file)
    try:
        load_model(model, str(weights_file))
    except Exception as e:  # safetensors raises plain RuntimeErrors on mismatch
        raise SnugfitError(f"{weights_file}: does not match {meta['arch']} ({e})") from None
    return model, meta


def _check_meta(meta, where) -> None:
    """Validate the JSON description: every field present, of the right type and range."""
    if not isinstance(meta, dict):
        raise SnugfitError(f"{where}: expected a JSON object")
    if meta.get("format_version") != FORMAT_VERSION:
        raise SnugfitError(
            f"{where}: unsupported format_version {meta.get('format_version')!r} "
            f"(this snugfit reads {FORMAT_VERSION})"
        )
    expected = {
        "arch": str,
        "vocab": list,
        "size": (int, list),
        "crop_pct": (int, float),
        "mean": list,
        "std": list,
    }
    for key, typ in expected.items():
        value = meta.get(key)
        if not isinstance(value, typ) or isinstance(value, bool):
            raise SnugfitError(f"{where}: field {key!r} is missing or has the wrong type")
    vocab = meta["vocab"]
    if len(vocab) < 1 or not all(isinstance(v, str) for v in vocab):
        raise SnugfitError(f"{where}: field 'vocab' must be a non-empty list of class names")
    if len(set(vocab)) != len(vocab):
        raise SnugfitError(f"{where}: field 'vocab' has repeated class names")
    size = meta["size"]
    sides = size if isinstance(size, list) else [size]
    if len(sides) not in (1, 2) or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in sides
    ):
        raise SnugfitError(f"{where}: field 'size' must be a positive integer or [height, width]")
    if not 0 < meta["crop_pct"] <= 1:
        raise SnugfitError(f"{where}: field 'crop_pct' must be in (0, 1]")
    for key in ("mean", "std"):
        v = meta[key]
        if len(v) != 3 or not all(_is_number(x) for x in v):
            raise SnugfitError(f"{where}: field {key!r} must be a list of 3 numbers")
    if not all(x > 0 for x in meta["std"]):
        raise SnugfitError(f"{where}: field 'std' must be positive")
    task_from_config(meta, where)  # the task's own fields (checked by the task)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_classes(model, weights_file: Path, n_classes: int, meta_file: Path) -> None:
    """The classifier's rows in the weights file must match the JSON's class count.

    Read from the safetensors header alone (no tensor is loaded), so a mismatch
    names both files and both numbers instead of a generic shape error.
    """
    from safetensors import safe_open

    key = models.class_rows(model)
    if key is None:
        return  # no single linear head to compare with: load_model checks shapes
    try:
        with safe_open(str(weights_file), framework="pt") as f:
            if key not in f.keys():  # noqa: SIM118 (safe_open has no __contains__)
                return  # load_model names the missing key
            rows = f.get_slice(key).get_shape()[0]
    except Exception as e:
        raise SnugfitError(f"{weights_file}: not a readable safetensors file ({e})") from None
    if rows != n_classes:
        raise SnugfitError(
            f"{meta_file}: lists {n_classes} classes but {weights_file.name} has a classifier "
            f"for {rows}"
        )
