"""Pretrained weights from the hub: offline, cached weights load and missing ones fail at
once with one line saying how to continue; each hub warning is printed once."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import constants
from safetensors.torch import save_file

from snugfit.errors import SnugfitError
from snugfit.models import create_model
from snugfit.models.hub import hub_problem

UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens, refused at once


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No hub (its endpoint refuses connections), an empty cache, and the hub's back-off
    sleeps recorded instead of slept."""
    monkeypatch.setattr(constants, "ENDPOINT", UNREACHABLE)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    sleeps: list[float] = []
    monkeypatch.setattr(time, "sleep", sleeps.append)
    return sleeps


def test_an_unreachable_hub_fails_at_once_and_says_how_to_continue(offline):
    assert hub_problem().startswith("ConnectError")
    start = time.perf_counter()
    with pytest.raises(SnugfitError) as e:
        create_model("test_resnet", 2)
    assert time.perf_counter() - start < 5 and offline == []  # no retry, no back-off
    assert str(e.value).startswith(
        "arch 'test_resnet': no pretrained weights in the local cache and the hub cannot be "
        "reached (ConnectError: "
    )
    assert str(e.value).endswith(
        "; to continue offline, pass a local weights file (--weights FILE; weights= in Python) "
        "or start from random weights (--no-pretrained; pretrained=False)"
    )
    assert constants.HF_HUB_OFFLINE is False  # offline only while looking in the cache


def test_cached_weights_load_without_the_hub(offline):
    repo = timm.models.get_pretrained_cfg("test_resnet").hf_hub_id  # timm/test_resnet.r160_in1k
    folder = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    (folder / "snapshots" / commit).mkdir(parents=True)
    torch.manual_seed(3)
    state = timm.create_model("test_resnet").state_dict()
    save_file(state, folder / "snapshots" / commit / "model.safetensors")
    model = create_model("test_resnet", 1000, head_init="random")
    body = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    assert body.keys() and all(torch.equal(v, state[k]) for k, v in body.items())
    assert offline == []


def test_each_hub_warning_is_printed_once():
    """The command line's logging and huggingface_hub's own handler print a line once."""
    script = (
        "from snugfit.app.cli import setup_logging\n"
        "from huggingface_hub.utils import logging\n"
        "setup_logging()\n"
        "logging.get_logger('huggingface_hub.utils._http').warning('Retrying in 1s [Retry 1/5].')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    err = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert err.returncode == 0, err.stderr
    assert err.stderr.count("Retrying in 1s [Retry 1/5].") == 1
