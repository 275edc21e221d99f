"""Exporting a model for prediction: safetensors weights + a JSON description.

``Learner.save(path)`` writes ``path/model.safetensors`` and ``path/snugfit.json``
(architecture, classes, image size, crop and normalisation): enough to predict
with no training data, and nothing is pickled. ``load_learner(path)`` validates
the JSON (types, class count against the weights) before building the model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from . import models
from .errors import SnugfitError

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
META_FILE = "snugfit.json"


def save_learner(learn, path) -> Path:
    """Write ``learn``'s model and inference settings into the folder ``path``."""
    from safetensors.torch import save_model

    if learn.arch is None:
        raise SnugfitError(
            "save: this learner's model is not a timm architecture name; "
            "save its state_dict yourself or build it with vision_learner(arch='...')"
        )
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_model(learn.model, str(path / WEIGHTS_FILE))
    meta = {"format_version": FORMAT_VERSION, "arch": learn.arch, **learn.infer_config}
    (path / META_FILE).write_text(json.dumps(meta, indent=2))
    return path


def load_learner(path, device: str | torch.device | None = None):
    """Rebuild a Learner for prediction from a folder written by `Learner.save`."""
    from safetensors.torch import load_model

    from .learner import Learner  # the learner module imports this one

    path = Path(path)
    meta_file, weights_file = path / META_FILE, path / WEIGHTS_FILE
    for f in (meta_file, weights_file):
        if not f.is_file():
            raise SnugfitError(f"{f}: not found; expected a folder written by learn.save()")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as e:
        raise SnugfitError(f"{meta_file}: not valid JSON ({e})") from None
    _check_meta(meta, meta_file)
    model = models.create_model(meta["arch"], len(meta["vocab"]), pretrained=False)
    try:
        load_model(model, str(weights_file))
    except Exception as e:  # safetensors raises plain RuntimeErrors on mismatch
        raise SnugfitError(f"{weights_file}: does not match {meta['arch']} ({e})") from None
    infer = {k: meta[k] for k in ("vocab", "size", "crop_pct", "mean", "std")}
    learn = Learner(None, model, arch=meta["arch"], infer=infer)
    if device is not None:
        learn.device = torch.device(device)
        learn.model.to(learn.device)
    return learn


def _check_meta(meta, where) -> None:
    expected = {
        "arch": str,
        "vocab": list,
        "size": int,
        "crop_pct": (int, float),
        "mean": list,
        "std": list,
    }
    if not isinstance(meta, dict):
        raise SnugfitError(f"{where}: expected a JSON object")
    for key, typ in expected.items():
        if not isinstance(meta.get(key), typ):
            raise SnugfitError(f"{where}: field {key!r} is missing or has the wrong type")
    if len(meta["vocab"]) < 1 or not all(isinstance(v, str) for v in meta["vocab"]):
        raise SnugfitError(f"{where}: field 'vocab' must be a non-empty list of class names")
