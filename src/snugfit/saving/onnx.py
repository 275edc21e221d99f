"""Export a saved model to ONNX, and check the file against PyTorch with onnxruntime.

The graph is the model alone, in eval mode and float32:

* input ``input``: float32 ``(N, 3, height, width)``, RGB images prepared as for
  validation and as the model's ``snugfit.json`` describes them (``size``: a side, or
  ``[height, width]``): resized to cover ``round(size / crop_pct)``, the central
  ``size`` kept, values
  scaled to [0, 1], then ``(x - mean) / std`` per channel;
* output ``logits``: ``(N, n_classes)``, before softmax (or, for a multi-label
  model, before the sigmoid).

Normalisation stays outside the graph, as in timm's and torchvision's exports: a
deployment resizes and crops outside anyway, most runtimes' image pipelines take
mean/std, and the graph stays exactly the network that was trained. Everything
needed to prepare inputs and name outputs is written into the file's
``metadata_props`` (every value JSON-encoded): the fields of ``snugfit.json``
(``arch``, ``vocab``, ``size``, ``crop_pct``, ``mean``, ``std``, and any others it
has) plus ``input_format`` and ``output``.

The batch dimension is fixed at 1 unless ``dynamic_batch`` is asked for. The
exporter is PyTorch's default, the dynamo-based one (``torch.onnx.export(...,
dynamo=True)``, which needs onnxscript); if it fails, the TorchScript-based
exporter (``dynamo=False``) is tried, and the result says which one wrote the file.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from snugfit import models
from snugfit.errors import SnugfitError, first_line
from snugfit.saving.model_files import model_folder, read_model_folder
from snugfit.sizes import as_hw, check_size

log = logging.getLogger("snugfit")

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
INPUT_FORMAT = (
    "float32 NCHW RGB: resized to cover round(size / crop_pct), center crop of size "
    "(a side, or [height, width]), scaled to [0, 1], then (x - mean) / std per channel"
)
OUTPUT_FORMAT = (
    "logits (N, len(vocab)), or (N, len(vocab), height, width) for a segmentation model: "
    "softmax over the classes gives probabilities (sigmoid if multi_label)"
)
_INSTALL = "install it with: pip install 'snugfit[onnx]'"


@dataclass
class OnnxExport:
    """What `export_onnx` wrote and how the check went.

    Attributes:
        path: The ``.onnx`` file.
        exporter: ``"dynamo"`` (``torch.onnx.export(dynamo=True)``) or ``"torchscript"``
            (``dynamo=False``, the fallback).
        opset: The ONNX opset of the file.
        dynamic_batch: Whether the batch dimension is free.
        max_diff: Largest absolute difference between PyTorch's and onnxruntime's
            logits on a random batch; None when the check was skipped.
        check: The check's outcome in one line.
    """

    path: Path
    exporter: str
    opset: int
    dynamic_batch: bool
    max_diff: float | None
    check: str


def export_onnx(
    learn_or_path,
    path=None,
    *,
    opset: int | None = None,
    dynamic_batch: bool = False,
    check: bool = True,
    atol: float = 1e-4,
    exporter: str = "auto",
) -> OnnxExport:
    """Export a Learner's model, or a model folder written by `Learner.save`, to ONNX.

    Args:
        learn_or_path: A `Learner` (anything with ``model``, ``arch`` and
            ``infer_config``), or a folder with ``snugfit.json`` and ``model.safetensors``
            (or the run folder of ``snugfit train`` holding it in ``model/``).
        path: The ``.onnx`` file to write (default for a folder: ``FOLDER/model.onnx``,
            in the model folder).
        opset: ONNX opset (default: the exporter's).
        dynamic_batch: Leave the batch dimension free (else it is 1).
        check: Run a random batch through PyTorch and onnxruntime (when installed)
            and compare the logits.
        atol: The largest absolute logits difference the check accepts.
        exporter: ``"auto"`` (dynamo, falling back to TorchScript), ``"dynamo"`` or
            ``"torchscript"``.

    Raises:
        SnugfitError: onnx or onnxscript is missing, both exporters failed, or the
            check found the file's logits further than ``atol`` from PyTorch's.
    """
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise SnugfitError(f"exporter: use auto, dynamo or torchscript, got {exporter!r}")
    if isinstance(learn_or_path, (str, os.PathLike)):
        folder = model_folder(learn_or_path)  # a run folder: its model/
        model, saved = read_model_folder(folder)
        cfg = {k: v for k, v in saved.items() if k != "format_version"}
        path = folder / "model.onnx" if path is None else path
    else:
        if path is None:
            raise SnugfitError("export_onnx: give the path of the .onnx file to write")
        learn = learn_or_path
        model, cfg = learn.model, {**learn.model_spec, **learn.infer_config}
    path = Path(path)
    try:
        import onnx  # noqa: F401 (needed by both exporters and for the metadata)
    except ImportError:
        raise SnugfitError(f"export --onnx needs the onnx package; {_INSTALL}") from None
    model = _fp32_copy(model, cfg)
    meta = {**cfg, "input_format": INPUT_FORMAT, "output": OUTPUT_FORMAT}
    props = {k: json.dumps(v) for k, v in meta.items()}
    # Dynamo specialises a dimension traced at size 1: trace a dynamic batch at 2.
    h, w = as_hw(check_size("size", cfg["size"]))
    x = torch.randn(2 if dynamic_batch else 1, 3, h, w)
    path.parent.mkdir(parents=True, exist_ok=True)
    used = _export(model, x, path, props, opset, dynamic_batch, exporter)
    result = OnnxExport(path, used, _opset_of(path), dynamic_batch, None, "")
    result.max_diff, result.check = _check(model, path, (h, w), dynamic_batch, atol, check)
    return result


def _fp32_copy(model: nn.Module, cfg: dict) -> nn.Module:
    """``model`` as a fresh float32 CPU module in eval mode.

    Rebuilt from its saved description (``cfg``: the architecture, and the decoder of
    a segmentation model) when there is one: the copy then has none of the
    training-time state (activation checkpointing, ``torch.compile``, channels-last
    weights) that could change what the exporter traces.
    """
    if cfg.get("arch") is not None:
        copy_ = models.rebuild(cfg, len(cfg["vocab"]))
        copy_.load_state_dict(model.state_dict())
    else:
        copy_ = copy.deepcopy(model).cpu()
    return copy_.float().eval().requires_grad_(False)


def _export(model, x, path: Path, props: dict, opset, dynamic: bool, exporter: str) -> str:
    """Write ``path`` with the dynamo exporter, else the TorchScript one; return which."""
    if exporter in ("auto", "dynamo"):
        try:
            _export_dynamo(model, x, path, props, opset, dynamic)
            return "dynamo"
        except Exception as e:
            if exporter == "dynamo":
                raise SnugfitError(f"the dynamo ONNX exporter failed: {first_line(e)}") from e
            log.warning(
                f"the dynamo ONNX exporter failed ({first_line(e)}); "
                "using the TorchScript exporter (dynamo=False)"
            )
    try:
        _export_torchscript(model, x, path, props, opset, dynamic)
    except Exception as e:
        raise SnugfitError(f"the TorchScript ONNX exporter failed: {first_line(e)}") from e
    return "torchscript"


@contextlib.contextmanager
def _quiet(*names: str):
    """Hold the named loggers at WARNING: the graph optimizer logs each pass at INFO."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _export_dynamo(model, x, path: Path, props: dict, opset, dynamic: bool) -> None:
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    with _quiet("onnxscript", "onnx_ir"):
        program = torch.onnx.export(
            model,
            (x,),
            None,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamo=True,
            dynamic_shapes=shapes,
            verbose=False,
        )
    program.model.metadata_props.update(props)
    program.save(str(path))  # weights go to a side file only past protobuf's 2 GB


def _export_torchscript(model, x, path: Path, props: dict, opset, dynamic: bool) -> None:
    import onnx

    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic else None
    with warnings.catch_warnings():
        # "legacy exporter" deprecation: known, and the fallback was already logged
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (x,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamo=False,
            dynamic_axes=axes,
        )
    proto = onnx.load(str(path))
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def _opset_of(path: Path) -> int:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _check(model, path: Path, hw: tuple[int, int], dynamic: bool, atol: float, check: bool):
    """``(max_diff, one line)``: PyTorch's and onnxruntime's logits on a random batch."""
    if not check:
        return None, "check: not asked for"
    try:
        import onnxruntime as ort
    except ImportError:
        return None, f"check: skipped, onnxruntime is not installed ({_INSTALL})"
    n = 3 if dynamic else 1  # dynamic: a batch size the export never saw
    x = torch.randn(n, 3, *hw, generator=torch.Generator().manual_seed(0))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])
    with torch.no_grad():
        want = model(x)
    diff = (got - want).abs().max().item()
    if not diff <= atol:  # also catches NaN
        raise SnugfitError(
            f"{path}: written, but onnxruntime's logits differ from PyTorch's by up to "
            f"{diff:.2e} (more than {atol:g}) on a random batch of {n}"
        )
    return diff, (
        f"check: onnxruntime agrees with PyTorch on a random batch of {n}: "
        f"max |logits difference| {diff:.1e} (limit {atol:g})"
    )
