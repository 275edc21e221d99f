"""Rectangular sizes everywhere: ``size=(height, width)``, ``--size 1400x2100``."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures import make_image_folder
from snugfit import ImageDataLoaders, vision_learner
from snugfit.data.augment import _rotate_rigidly, _sampling_grid, affine_params, batch_augment
from snugfit.data.decode import decode_train, decode_valid
from snugfit.errors import SnugfitError
from snugfit.sizes import as_hw, check_size, format_size, parse_size
from snugfit.train.factory import load_learner
from test_cli import run_cli


def test_size_forms():
    assert check_size("size", (32, 32)) == 32 and check_size("size", [24, 40]) == (24, 40)
    assert as_hw(7) == (7, 7) and format_size((24, 40)) == "24x40"
    assert parse_size("1400x2100") == (1400, 2100) and parse_size(" 96 ") == 96
    for bad in (0, (0, 4), (1, 2, 3), "x", True, 2.5):
        with pytest.raises(SnugfitError, match="size"):
            check_size("size", bad) if not isinstance(bad, str) else parse_size(bad)


def halves(tmp_path, w=90, h=60):
    """A w x h image: red left half, blue right half."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2] = (255, 0, 0)
    a[:, w // 2 :] = (0, 0, 255)
    path = tmp_path / "halves.png"
    Image.fromarray(a).save(path)
    return path


def test_decoding_keeps_the_aspect(tmp_path):
    path = halves(tmp_path)
    x = decode_train(path, (32, 48))
    assert x.shape == (3, 32, 48)
    # the whole 2:3 image, not a square crop of it: half red, half blue
    assert (x[0, :, :20] > 200).all() and (x[2, :, 28:] > 200).all()
    v = decode_valid(path, (32, 48), crop_pct=0.875)
    assert v.shape == (3, 32, 48) and (v[0, :, :16] > 200).all() and (v[2, :, 32:] > 200).all()
    # squares are decoded as before: the centre of the shorter side
    assert decode_train(path, 32).shape == (3, 32, 32)


def test_rotation_is_rigid_in_pixels_for_wide_images():
    torch.manual_seed(0)
    theta = affine_params(4, min_scale=1.0, max_rotate=90, flip=False)
    h, w = 8, 16  # output and input both twice as wide as high
    grid = _sampling_grid(_rotate_rigidly(theta, w / h), (h, w))
    # one output pixel to the right lands one input pixel away, in any direction
    step = (grid[:, :, 1:] - grid[:, :, :-1]) * torch.tensor([w / 2, h / 2])
    assert torch.allclose(step.norm(dim=-1), torch.ones(()), atol=1e-4)
    plain = _sampling_grid(theta, (h, w))  # uncorrected: a shear, not a rotation
    step = (plain[:, :, 1:] - plain[:, :, :-1]) * torch.tensor([w / 2, h / 2])
    assert not torch.allclose(step.norm(dim=-1), torch.ones(()), atol=1e-2)
    x = torch.randint(0, 255, (4, 3, 40, 60), dtype=torch.uint8)
    assert batch_augment(x, (32, 48), generator=torch.Generator().manual_seed(0)).shape == (
        4, 3, 32, 48,
    )  # fmt: skip


def test_loaders_learner_plan_and_saved_model_carry_height_and_width(image_folder, tmp_path):
    dls = ImageDataLoaders.from_folder(image_folder, bs=4, size=(32, 48), num_workers=0)
    assert dls.size == (32, 48) and dls.presize == (40, 56)
    x, _ = dls.one_batch()
    assert x.shape == (4, 3, 32, 48)
    xv, _ = next(iter(dls.valid))
    assert xv.shape[-2:] == (32, 48)
    torch.manual_seed(0)
    learn = vision_learner(dls, "test_resnet", pretrained=False, memory_budget="1GB",
                           precision="fp32")  # fmt: skip
    learn.fit(1, 1e-3)
    assert learn.memory_plan.size == (32, 48) and learn.memory_plan.to_dict()["size"] == [32, 48]
    assert learn.events.of("fit_start")[0]["size"] == (32, 48)
    folder = learn.save(tmp_path / "m")
    assert json.loads((folder / "snugfit.json").read_text())["size"] == [32, 48]
    loaded = load_learner(folder)
    files = [p for p, _ in dls.valid_items]
    _, probs = loaded.predict_many(files)
    assert probs.shape == (len(files), 2) and loaded.preprocessing.hw == (32, 48)
    assert torch.allclose(probs, learn.predict_many(files)[1], atol=1e-6)


def test_command_line_takes_height_x_width(tmp_path, capsys):
    root = make_image_folder(tmp_path / "d")
    code, out, _ = run_cli(capsys, "plan", str(root), "--arch", "test_resnet", "--size",
                           "32x48", "--bs", "4", "--gpu-mem", "1GB")  # fmt: skip
    assert code == 0 and "at 32x48 px" in out
    with pytest.raises(SystemExit) as stop:
        run_cli(capsys, "plan", "--arch", "test_resnet", "--size", "32x", "--gpu-mem", "1GB")
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "argument --size: must be a positive integer, got '32x'" in err


def test_onnx_export_at_height_x_width(image_folder, tmp_path):
    import onnx

    from snugfit.saving.onnx import export_onnx

    dls = ImageDataLoaders.from_folder(image_folder, bs=4, size=(32, 48), num_workers=0)
    learn = vision_learner(dls, "test_resnet", pretrained=False, precision="fp32")
    result = export_onnx(learn, tmp_path / "m.onnx")
    assert result.max_diff is not None and result.max_diff <= 1e-4
    proto = onnx.load(str(result.path))
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 32, 48]
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert meta["size"] == [32, 48]


def test_a_vit_says_which_size_it_takes(image_folder):
    dls = ImageDataLoaders.from_folder(image_folder, bs=4, size=(32, 48), num_workers=0)
    with pytest.raises(SnugfitError, match=r"takes 224 images only .* not 32x48; use size=224"):
        vision_learner(dls, "vit_tiny_patch16_224", pretrained=False)
