"""Segmentation from the command line: train, predict masks, export; and resume."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures import SEG_CODES, make_segmentation_folder
from test_cli import run_cli

TRAIN = ["--arch", "test_resnet", "--no-pretrained", "--bs", "4", "--size", "48x72", "--crop",
         "32", "--workers", "0", "--epochs", "1", "--head-epochs", "1", "--no-lr-find"]  # fmt: skip


@pytest.fixture
def seg_folder(tmp_path):
    return make_segmentation_folder(tmp_path / "seg", n=12, sizes=((48, 72),))


def test_train_predict_and_export_a_segmentation_model(seg_folder, tmp_path, capsys):
    out = tmp_path / "run"
    Image.new("RGB", (72, 48)).save(seg_folder / "images" / "lonely.png")  # no mask
    code, stdout, err = run_cli(capsys, "train", str(seg_folder), *TRAIN, "--out", str(out))
    assert code == 0, err
    assert "classes (segmentation)" in stdout and "dice" in stdout
    assert "skipped 1 image(s) without a mask; list in" in stdout
    assert "precomputed features do not apply to this model" in stdout
    meta = json.loads((out / "model" / "snugfit.json").read_text())
    assert meta["decoder"] == "unet" and meta["task"] == "segmentation"
    assert meta["vocab"] == list(SEG_CODES) and meta["size"] == [48, 72] and meta["crop"] == 32
    page = (out / "report.html").read_text()
    assert "lowest Dice" in page and "true pixels" in page
    assert "<p>1 image(s) without a mask, skipped by training.</p>" in page
    # masks at each image's own size, an overlay, and the pixel shares
    image = seg_folder / "images" / "scene_00.png"
    odd = tmp_path / "odd.png"
    Image.open(image).resize((101, 67)).save(odd)
    masks = tmp_path / "masks"
    code, stdout, err = run_cli(capsys, "predict", str(out / "model"), str(image), str(odd),
                                "--out", str(masks), "--overlay", "--flip", "--csv",
                                str(tmp_path / "p.csv"))  # fmt: skip
    assert code == 0, err
    m = np.array(Image.open(masks / "odd.png"))
    assert m.shape == (67, 101) and m.dtype == np.uint8 and m.max() < len(SEG_CODES)
    assert Image.open(masks / "scene_00_overlay.png").size == (72, 48)
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    shares = [float(rows[0][f"share_{c}"]) for c in SEG_CODES]
    assert len(rows) == 2 and sum(shares) == pytest.approx(1.0, abs=1e-4)
    code, stdout, err = run_cli(capsys, "export", str(out / "model"), "--onnx")
    assert code == 0, err
    import onnxruntime as ort

    session = ort.InferenceSession(str(out / "model" / "model.onnx"))
    x = np.random.default_rng(0).standard_normal((1, 3, 48, 72)).astype(np.float32)
    assert session.run(None, {"input": x})[0].shape == (1, len(SEG_CODES), 48, 72)


def test_a_classifier_refuses_mask_outputs(image_folder, tmp_path, capsys):
    from test_cli import TRAIN as CLS

    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", str(image_folder), *CLS, "--out", str(out),
                           "--epochs", "1", "--head-epochs", "1")  # fmt: skip
    assert code == 0, err
    code, _, err = run_cli(capsys, "predict", str(out / "model"), str(image_folder), "--out",
                           str(tmp_path / "m"))  # fmt: skip
    assert code == 2 and "for segmentation models; this model is a classifier" in err
    code, _, err = run_cli(capsys, "predict", str(out / "model"), str(image_folder), "--flip")
    assert code == 2 and "--flip" in err


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--tta", "2"], "--tta: for classification only; a segmentation model's masks are "
                         "averaged over flips at prediction (snugfit predict --flip)"),
        (["--mixup", "0.4"], "--mixup: for classification only; segmentation has its own "
                             "losses (--loss)"),
    ],
)  # fmt: skip
def test_classification_flags_are_refused_before_the_data_check(seg_folder, tmp_path, capsys,
                                                                flags, said):  # fmt: skip
    """--tta used to fail after the whole training (its evaluation runs last)."""
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, "train", str(seg_folder), *TRAIN, *flags, "--out", str(out))
    assert code == 2 and err.strip() == f"snugfit: error: {said}"
    assert "check:" not in stdout and not (out / "config.json").exists()


def test_segmentation_resume_is_exact(seg_folder, tmp_path):
    from snugfit import SegmentationDataLoaders
    from snugfit.callbacks import Callback, SaveCheckpoint
    from snugfit.train.factory import unet_learner

    class StopAt(Callback):
        def after_batch(self, learn):
            if (learn.fit_index, learn.epoch, learn.iter) == (1, 0, 1):
                raise KeyboardInterrupt

    def learner():
        torch.manual_seed(0)
        dls = SegmentationDataLoaders.from_folder(seg_folder, bs=4, size=(48, 72), crop=32,
                                                  num_workers=0)  # fmt: skip
        return unet_learner(dls, "test_resnet", pretrained=False, precision="fp32")

    ref = learner()
    ref.fine_tune(1, freeze_epochs=1)
    ckpt = tmp_path / "c.safetensors"
    stopped = learner()
    with pytest.raises(KeyboardInterrupt):
        stopped.fine_tune(1, freeze_epochs=1, cbs=[SaveCheckpoint(ckpt, 1), StopAt()])
    torch.manual_seed(7)
    resumed = learner()
    resumed.fine_tune(1, freeze_epochs=1, resume=ckpt)
    a, b = ref.model.state_dict(), resumed.model.state_dict()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
    assert resumed.recorder.rows[-1]["dice"] == pytest.approx(ref.recorder.rows[-1]["dice"])


@pytest.mark.parametrize("recipe, expected", [("auto", (8, 0)), ("fine_tune", (2, 0))])
def test_the_run_records_a_decoders_default_epochs(recipe, expected):
    from snugfit.app.config import TrainConfig
    from snugfit.app.run import _with_model_defaults
    from test_segmentation_learner import seg_learner

    cfg = _with_model_defaults(TrainConfig(data="d", recipe=recipe), seg_learner())
    assert (cfg.epochs, cfg.head_epochs) == expected
    given = _with_model_defaults(TrainConfig(data="d", epochs=3, head_epochs=1), seg_learner())
    assert (given.epochs, given.head_epochs) == (3, 1)
