"""Untrusted files: nothing is unpickled with code, and metadata is validated.

A pickle can run any code when it is loaded. Every place snugfit reads a file
someone else may have made (``--weights``, a model folder, a checkpoint) is fed
a crafted pickle that would create a marker file; the marker must not appear,
and the error must be one line naming the file.
"""

import ast
import builtins
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from snugfit.app.cli import main
from snugfit.errors import SnugfitError
from snugfit.saving.checkpoint import read_checkpoint
from snugfit.saving.model_files import META_FILE, WEIGHTS_FILE
from snugfit.train.factory import load_learner
from test_learner import make_learner

SRC = Path(__file__).resolve().parents[1] / "src" / "snugfit"


class Payload:
    """Unpickling this opens (creates) a marker file: it stands for arbitrary code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def evil_pickle(path: Path, marker: Path) -> Path:
    torch.save({"conv1.0.weight": torch.zeros(1), "payload": Payload(marker)}, path)
    return path


def test_the_payload_is_live(tmp_path):
    # Full unpickling runs it: the tests below would catch a loader that did so.
    marker = tmp_path / "pwned"
    path = evil_pickle(tmp_path / "evil.pth", marker)
    torch.load(path, weights_only=False)["payload"].close()
    assert marker.exists()


def test_cli_weights_pickle_is_refused(image_folder, tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = evil_pickle(tmp_path / "evil.pth", marker)
    code = main(
        [
            *("train", str(image_folder), "--arch", "test_resnet", "--weights", str(path)),
            *("--out", str(tmp_path / "run"), "--workers", "0", "--size", "32"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert not marker.exists()
    assert err.count("\n") == 1 and "evil.pth: not a plain state dict" in err


@pytest.mark.parametrize("name", ["evil.pth", "evil.safetensors"])
def test_pickle_as_checkpoint_is_refused(tmp_path, name):
    marker = tmp_path / "pwned"
    path = evil_pickle(tmp_path / name, marker)
    with pytest.raises(SnugfitError, match=f"{name}: not a snugfit checkpoint"):
        make_learner().load_checkpoint(path)
    assert not marker.exists()


def test_pickle_as_model_weights_is_refused(tmp_path):
    saved_model(tmp_path)
    marker = tmp_path / "pwned"
    evil_pickle(tmp_path / "m" / WEIGHTS_FILE, marker)
    with pytest.raises(SnugfitError, match=r"model\.safetensors: not a readable safetensors"):
        load_learner(tmp_path / "m")
    assert not marker.exists()


def test_every_torch_load_in_the_package_is_weights_only():
    # A guard for future code: any torch.load must pass weights_only=True.
    calls = []
    for file in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("torch.load"):
                kw = {k.arg: k.value for k in node.keywords}
                safe = isinstance(kw.get("weights_only"), ast.Constant) and (
                    kw["weights_only"].value is True
                )
                calls.append((file.name, node.lineno, safe))
    assert calls, "expected at least the weights loader's torch.load"
    assert all(safe for *_, safe in calls), calls
    text = "\n".join(f.read_text() for f in SRC.rglob("*.py"))
    assert "pickle.load" not in text and "allow_pickle=True" not in text


def saved_model(tmp_path):
    learn = make_learner(arch="test_resnet")
    learn.arch = "test_resnet"  # built without vision_learner: name it for saving
    path = learn.save(tmp_path / "m")
    return path, json.loads((path / META_FILE).read_text())


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("format_version", 99, "unsupported format_version 99"),
        ("arch", 3, "field 'arch'"),
        ("vocab", [], "field 'vocab' must be a non-empty list"),
        ("vocab", ["a", "a"], "repeated class names"),
        ("vocab", [1, 2], "field 'vocab' must be a non-empty list"),
        ("size", True, "field 'size'"),
        ("size", 0, "field 'size' must be a positive integer"),
        ("crop_pct", 1.5, "field 'crop_pct' must be in"),
        ("mean", [0.5, 0.5], "field 'mean' must be a list of 3 numbers"),
        ("std", [0.2, 0.2, "x"], "field 'std' must be a list of 3 numbers"),
        ("std", [0.2, 0.0, 0.2], "field 'std' must be positive"),
    ],
)
def test_model_metadata_is_validated(tmp_path, field, value, expected):
    path, meta = saved_model(tmp_path)
    meta[field] = value
    (path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(SnugfitError, match=expected) as info:
        load_learner(path)
    assert str(path / META_FILE) in str(info.value)


def test_class_count_is_checked_against_the_weights(tmp_path):
    path, meta = saved_model(tmp_path)
    meta["vocab"] = [f"c{i}" for i in range(5)]
    (path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(
        SnugfitError, match=r"lists 5 classes but model\.safetensors has a classifier"
    ):
        load_learner(path)


def rewrite_checkpoint_meta(path: Path, edit) -> None:
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        meta = json.loads(f.metadata()["snugfit"])
    edit(meta)
    save_file(tensors, str(path), {"snugfit": json.dumps(meta)})


@pytest.mark.parametrize(
    "field, value",
    [
        ("precision", "fp8"),
        ("micro_bs", 0),
        ("micro_bs", "4"),
        ("frozen_to", -1),
        ("checkpointing", "yes"),
        ("position", {"fit_index": 0, "epoch": "1", "iter": 0}),
        ("optimizer", {"param_groups": "all"}),
        ("recorder", None),
    ],
)
def test_checkpoint_metadata_is_validated(tmp_path, field, value):
    learn = make_learner()
    path = learn.save_checkpoint(tmp_path / "c.safetensors")
    read_checkpoint(path)  # valid as written

    rewrite_checkpoint_meta(path, lambda m: m.__setitem__(field, value))
    with pytest.raises(SnugfitError, match=f"checkpoint field '{field}' is missing or invalid"):
        learn.load_checkpoint(path)


def test_checkpoint_metadata_that_is_not_json(tmp_path):
    learn = make_learner()
    path = learn.save_checkpoint(tmp_path / "c.safetensors")
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    save_file(tensors, str(path), {"snugfit": "{oops"})
    with pytest.raises(
        SnugfitError, match=r"c\.safetensors: checkpoint metadata is not valid JSON"
    ):
        learn.load_checkpoint(path)
