"""ONNX export: the file reproduces PyTorch's logits (onnxruntime), carries the model's
description, and takes any batch size when exported with a dynamic batch."""

import json
import logging
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from snugfit.errors import SnugfitError
from snugfit.models import create_model
from snugfit.saving import onnx as onnx_export
from snugfit.saving.onnx import export_onnx
from snugfit.train.learner import Learner
from test_cli import run_cli

INFER = {"vocab": ["ant", "bee", "wasp"], "size": 32, "crop_pct": 0.875}
INFER.update(mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3])


def tiny_learner(arch: str) -> Learner:
    torch.manual_seed(0)
    model = create_model(arch, len(INFER["vocab"]), pretrained=False)
    return Learner(None, model, arch=arch, infer=dict(INFER))


def run_onnx(path, x: torch.Tensor) -> torch.Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(["logits"], {"input": x.numpy()})[0])


@pytest.mark.parametrize("arch", ["test_efficientnet", "test_resnet", "test_vit"])
def test_dynamic_batch_export_matches_pytorch(arch, tmp_path):
    learn = tiny_learner(arch)
    result = export_onnx(learn, tmp_path / "m.onnx", dynamic_batch=True)
    assert result.exporter == "dynamo" and result.dynamic_batch
    assert result.max_diff is not None and result.max_diff <= 1e-4
    assert "agrees with PyTorch" in result.check
    learn.model.eval()
    for n in (1, 5):
        x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(n))
        with torch.no_grad():
            want = learn.model(x)
        got = run_onnx(result.path, x)
        assert got.shape == (n, 3)
        assert (got - want).abs().max().item() <= 1e-4


def test_metadata_and_fixed_batch(tmp_path):
    learn = tiny_learner("test_resnet")
    result = export_onnx(learn, tmp_path / "m.onnx", opset=18)
    proto = onnx.load(str(result.path))
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert meta["vocab"] == INFER["vocab"] and meta["size"] == 32
    assert meta["mean"] == INFER["mean"] and meta["std"] == INFER["std"]
    assert meta["crop_pct"] == 0.875 and meta["arch"] == "test_resnet"
    assert "mean" in meta["input_format"] and "logits" in meta["output"]
    assert result.opset == 18
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3, 32, 32]  # normalised images, batch 1
    assert [o.name for o in proto.graph.output] == ["logits"]


def test_torchscript_fallback_when_dynamo_fails(tmp_path, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("cannot trace this model")

    monkeypatch.setattr(onnx_export, "_export_dynamo", broken)
    with caplog.at_level(logging.WARNING, logger="snugfit"):
        result = export_onnx(tiny_learner("test_resnet"), tmp_path / "m.onnx", dynamic_batch=True)
    assert result.exporter == "torchscript" and result.max_diff <= 1e-4
    assert "cannot trace this model" in caplog.text and "dynamo=False" in caplog.text
    meta = {p.key for p in onnx.load(str(result.path)).metadata_props}
    assert {"vocab", "size", "mean", "std"} <= meta
    x = torch.randn(5, 3, 32, 32)
    assert run_onnx(result.path, x).shape == (5, 3)


def test_check_is_skipped_without_onnxruntime(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    result = export_onnx(tiny_learner("test_resnet"), tmp_path / "m.onnx")
    assert result.max_diff is None and "skipped" in result.check
    assert result.path.is_file()


def test_a_check_beyond_tolerance_is_an_error(tmp_path):
    with pytest.raises(SnugfitError, match="differ from PyTorch's"):
        export_onnx(tiny_learner("test_resnet"), tmp_path / "m.onnx", atol=1e-12)


def test_cli_export(tmp_path, capsys):
    tiny_learner("test_efficientnet").save(tmp_path / "model")
    code, out, err = run_cli(capsys, "export", str(tmp_path / "model"), "--onnx")
    assert code == 0, err
    wrote, check = out.strip().splitlines()
    assert wrote.startswith(f"wrote {tmp_path / 'model' / 'model.onnx'} (opset ")
    assert "batch 1, dynamo exporter" in wrote
    assert check.startswith("check: onnxruntime agrees with PyTorch")
    diff = float(check.split("max |logits difference| ")[1].split()[0])
    assert diff <= 1e-4
    x = np.zeros((1, 3, 32, 32), dtype=np.float32)
    assert run_onnx(tmp_path / "model" / "model.onnx", torch.from_numpy(x)).shape == (1, 3)
    # --onnx is the only format so far, and it must be asked for
    with pytest.raises(SystemExit) as e:
        run_cli(capsys, "export", str(tmp_path / "model"))
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--onnx" in err and err.count("\n") == 1


def test_cli_export_takes_the_run_folder_of_train(tmp_path, capsys):
    """``snugfit export RUN --onnx`` (train's --out) exports RUN/model into RUN/model."""
    from snugfit.app.run_folder import RunFolder

    run = RunFolder(tmp_path / "run")
    tiny_learner("test_resnet").save(run.model)
    code, out, err = run_cli(capsys, "export", str(run.root), "--onnx")
    assert code == 0, err
    assert out.startswith(f"wrote {run.model / 'model.onnx'} (opset ")
    assert (run.model / "model.onnx").is_file() and not (run.root / "model.onnx").exists()
