"""Exporting a model for prediction: safetensors weights + a JSON description.

``Learner.save(path)`` writes ``path/model.safetensors`` and ``path/snugfit.json``
(architecture, classes, image size, crop and normalisation; ``multi_label`` and,
for multi-label models, the ``threshold`` of `predict`): enough to predict
with no training data, and nothing is pickled. ``load_learner(path)`` validates
the JSON (types, class count against the weights) before building the model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from snugfit import models
from snugfit.errors import SnugfitError

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
META_FILE = "snugfit.json"


def save_learner(learn, path) -> Path:
    """Write ``learn``'s model and inference settings into the folder ``path``.

    Each file is written atomically: a run killed while saving leaves the previous
    files (or none), never a truncated one.
    """
    from safetensors.torch import save_model

    from snugfit.saving.checkpoint import atomic_write

    if learn.arch is None:
        raise SnugfitError(
            "save: this learner's model is not a timm architecture name; "
            "save its state_dict yourself or build it with vision_learner(arch='...')"
        )
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    atomic_write(path / WEIGHTS_FILE, lambda tmp: save_model(learn.model, str(tmp)))
    meta = {"format_version": FORMAT_VERSION, "arch": learn.arch, **learn.infer_config}
    atomic_write(path / META_FILE, lambda tmp: tmp.write_text(json.dumps(meta, indent=2)))
    return path


def load_learner(path, device: str | torch.device | None = None):
    """Rebuild a Learner for prediction from a folder written by `Learner.save`."""
    from safetensors.torch import load_model

    from snugfit.train.learner import Learner  # the learner module imports this one

    path = Path(path)
    meta_file, weights_file = path / META_FILE, path / WEIGHTS_FILE
    for f in (meta_file, weights_file):
        if not f.is_file():
            raise SnugfitError(f"{f}: not found; expected a folder written by learn.save()")
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SnugfitError(f"{meta_file}: not valid JSON ({e})") from None
    _check_meta(meta, meta_file)
    model = models.create_model(meta["arch"], len(meta["vocab"]), pretrained=False)
    _check_classes(model, weights_file, len(meta["vocab"]), meta_file)
    try:
        load_model(model, str(weights_file))
    except Exception as e:  # safetensors raises plain RuntimeErrors on mismatch
        raise SnugfitError(f"{weights_file}: does not match {meta['arch']} ({e})") from None
    infer = {k: meta[k] for k in ("vocab", "size", "crop_pct", "mean", "std")}
    if meta.get("multi_label"):
        infer.update(multi_label=True, threshold=meta["threshold"])
    learn = Learner(None, model, arch=meta["arch"], infer=infer)
    if device is not None:
        from snugfit.data.loaders import resolve_device

        learn.device = resolve_device(device)
        learn.model.to(learn.device)
    return learn


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
        "size": int,
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
    if meta["size"] < 1:
        raise SnugfitError(f"{where}: field 'size' must be a positive integer")
    if not 0 < meta["crop_pct"] <= 1:
        raise SnugfitError(f"{where}: field 'crop_pct' must be in (0, 1]")
    for key in ("mean", "std"):
        v = meta[key]
        if len(v) != 3 or not all(_is_number(x) for x in v):
            raise SnugfitError(f"{where}: field {key!r} must be a list of 3 numbers")
    if not all(x > 0 for x in meta["std"]):
        raise SnugfitError(f"{where}: field 'std' must be positive")
    # Optional (older files are single-label): multi_label, and then its threshold.
    if not isinstance(meta.get("multi_label", False), bool):
        raise SnugfitError(f"{where}: field 'multi_label' must be true or false")
    if meta.get("multi_label"):
        t = meta.get("threshold")
        if not _is_number(t) or not 0 <= t <= 1:
            raise SnugfitError(f"{where}: field 'threshold' must be a number in [0, 1]")


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_classes(model, weights_file: Path, n_classes: int, meta_file: Path) -> None:
    """The classifier's rows in the weights file must match the JSON's class count.

    Read from the safetensors header alone (no tensor is loaded), so a mismatch
    names both files and both numbers instead of a generic shape error.
    """
    from safetensors import safe_open

    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    names = {id(p): n for n, p in model.named_parameters()}
    weight = getattr(head, "weight", None)
    key = names.get(id(weight)) if weight is not None else None
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


def export_onnx(learn_or_path, path=None, **kwargs):
    """Write an ONNX file of a Learner's model or of a saved model folder, checked
    against PyTorch with onnxruntime: see `snugfit.onnx_export.export_onnx`."""
    from snugfit.saving.onnx import export_onnx as export

    return export(learn_or_path, path, **kwargs)
