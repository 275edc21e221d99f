"""Tests for snugfit.models' segmentation models: smp decoders on timm encoders, any input
size, encoder weights, layer groups, activation checkpointing."""

from __future__ import annotations

import pytest
import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from snugfit.errors import SnugfitError
from snugfit.models import (
    SegmentationModel,
    batchnorm_to_eval,
    checkpoint_units,
    create_segmentation_model,
    freeze_groups,
    group_names,
    is_cnn,
    is_segmentation_model,
    layer_groups,
    load_weights,
    model_stages,
    norm_and_bias_param_names,
    packaged_lite0_weights,
    segmentation_config,
    set_grad_checkpointing,
)
from snugfit.models.encoders import encoder_key_map
from snugfit.models.segmentation import pad_to_multiple

DECODERS = ["unet", "fpn", "deeplabv3plus"]


def seg(arch: str = "test_resnet", n_classes: int = 3, decoder: str = "unet") -> SegmentationModel:
    torch.manual_seed(0)
    return create_segmentation_model(arch, n_classes, decoder=decoder, pretrained=False)


def one_line(e: pytest.ExceptionInfo) -> str:
    message = str(e.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- any size


@pytest.mark.parametrize("decoder", DECODERS)
def test_logits_have_the_input_size_for_odd_sizes(decoder):
    model = seg(decoder=decoder).eval()
    assert is_segmentation_model(model) and model.n_classes == 3
    with torch.no_grad():
        for h, w in [(50, 70), (64, 64), (33, 97), (8, 8)]:
            assert model(torch.randn(2, 3, h, w)).shape == (2, 3, h, w)


@pytest.mark.parametrize("decoder", DECODERS)
def test_forward_is_smp_on_the_padded_image(decoder):
    torch.manual_seed(0)
    cls = {"unet": smp.Unet, "fpn": smp.FPN, "deeplabv3plus": smp.DeepLabV3Plus}[decoder]
    net = cls("tu-test_resnet", encoder_weights=None, classes=3).eval()
    model = create_segmentation_model("test_resnet", 3, decoder=decoder, pretrained=False).eval()
    # The same children, so the same state-dict keys: smp's own state dict loads as is.
    assert list(model.state_dict()) == list(net.state_dict())
    model.load_state_dict(net.state_dict())
    assert model.stride == (16 if decoder == "deeplabv3plus" else 32)
    x = torch.randn(1, 3, 50, 70)
    padded = F.pad(x, (0, -70 % model.stride, 0, -50 % model.stride), mode="reflect")
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(padded)[..., :50, :70])
        torch.testing.assert_close(model(padded), net(padded))


def test_pad_to_multiple_reflects_then_repeats_the_edge():
    x = torch.arange(6.0).reshape(1, 1, 2, 3)
    assert pad_to_multiple(x, 1) is x
    padded = pad_to_multiple(torch.arange(5.0).reshape(1, 1, 1, 5), 8)
    # Reflection needs less padding than the side: 3 columns added to 5 do not.
    assert padded[0, 0, 0].tolist() == [0, 1, 2, 3, 4, 4, 4, 4]
    wide = pad_to_multiple(torch.arange(7.0).reshape(1, 1, 1, 7).expand(1, 1, 7, 7), 8)
    assert wide.shape == (1, 1, 8, 8)
    assert wide[0, 0, 0].tolist() == [0, 1, 2, 3, 4, 5, 6, 5]


# --------------------------------------------------------------------------- weights


def assert_encoder_holds(model: SegmentationModel, state: dict[str, torch.Tensor]) -> None:
    """Every encoder tensor equals, bit for bit, the classifier tensor it comes from."""
    encoder = model.encoder.model.state_dict()
    pairs = encoder_key_map(list(encoder), list(state))
    assert set(pairs) == set(encoder)
    for key, value in encoder.items():
        assert torch.equal(value, state[pairs[key]]), key


@pytest.mark.parametrize("arch", ["test_resnet", "test_convnext"])  # convnext: renamed keys
def test_local_timm_weights_land_in_the_encoder(tmp_path, arch):
    torch.manual_seed(1)
    classifier = timm.create_model(arch, pretrained=False)
    state = {k: v.contiguous() for k, v in classifier.state_dict().items()}
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))

    model = create_segmentation_model(arch, 4, decoder="fpn", weights=path)
    assert_encoder_holds(model, state)


def test_efficientnet_pytorch_lite0_file_converts_into_the_encoder():
    path = packaged_lite0_weights()
    full = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    load_weights(full, path)  # converted by tensor order, as for a classifier
    state = full.state_dict()

    model = create_segmentation_model("tf_efficientnet_lite0", 2, weights=path)
    assert_encoder_holds(model, state)
    encoder = model.encoder.model
    assert torch.equal(encoder.conv_stem.weight, state["conv_stem.weight"])
    assert torch.equal(encoder.blocks[6][0].bn3.running_var, state["blocks.6.0.bn3.running_var"])
    # Without weights=, pretrained=True uses the same packaged file, offline.
    packaged = create_segmentation_model("tf_efficientnet_lite0", 2, decoder="fpn")
    assert_encoder_holds(packaged, state)
    cfg = segmentation_config(model)
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["std"] == (0.5, 0.5, 0.5)


def test_weights_of_another_arch_give_one_line_naming_the_file(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file(timm.create_model("test_efficientnet").state_dict(), str(path))
    with pytest.raises(SnugfitError) as e:
        create_segmentation_model("test_resnet", 2, weights=path)
    assert str(path) in one_line(e) and "keys do not match" in str(e.value)


def test_weights_of_another_shape_name_the_first_mismatch(tmp_path):
    state = timm.create_model("test_resnet").state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(1, 1, 3, 3)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(SnugfitError) as e:
        create_segmentation_model("test_resnet", 2, weights=path)
    message = one_line(e)
    assert str(path) in message and "layer1.0.conv1.weight" in message and "(1, 1, 3, 3)" in message

    with pytest.raises(SnugfitError) as e:
        create_segmentation_model("test_resnet", 2, weights=tmp_path / "missing.pth")
    assert "not found" in one_line(e)


def test_unknown_names_give_one_line_with_close_matches():
    with pytest.raises(SnugfitError) as e:
        create_segmentation_model("resnet181", 2, pretrained=False)
    assert "resnet18" in one_line(e)
    with pytest.raises(SnugfitError) as e:
        create_segmentation_model("test_resnet", 2, decoder="fnp", pretrained=False)
    assert "did you mean fpn" in one_line(e)
    with pytest.raises(SnugfitError) as e:
        create_segmentation_model("test_resnet", 2, decoder="segformer", pretrained=False)
    assert "unet, fpn, deeplabv3plus" in one_line(e)
    # A timm model smp cannot use as an encoder (a ViT has a single scale).
    with pytest.raises(SnugfitError) as e:
        create_segmentation_model("test_vit", 2, pretrained=False)
    assert "test_vit" in one_line(e)
    for bad in (0, 2.5, True):
        with pytest.raises(SnugfitError, match="n_classes"):
            create_segmentation_model("test_resnet", bad, pretrained=False)


def test_decoder_name_is_case_insensitive():
    assert seg(decoder="DeepLabV3Plus").decoder_name == "deeplabv3plus"


# --------------------------------------------------------------------------- layer groups


def decoder_and_head_ids(model: SegmentationModel) -> set[int]:
    return {id(p) for m in (model.decoder, model.segmentation_head) for p in m.parameters()}


@pytest.mark.parametrize(
    ("arch", "decoder", "names"),
    [
        ("test_resnet", "unet", ["stem", "stage1", "stage2", "stage3", "stage4"]),
        ("test_efficientnet", "fpn", ["stem", *[f"stage{i}" for i in range(1, 6)]]),
        ("test_convnext", "deeplabv3plus", ["stem", "stage1", "stage2", "stage3", "stage4"]),
    ],
)
def test_layer_groups_are_encoder_stages_then_decoder_and_head(arch, decoder, names):
    model = seg(arch, decoder=decoder)
    groups = layer_groups(model)
    assert group_names(model) == [*names, "decoder+head"]
    assert {id(p) for _, p in groups[-1]} == decoder_and_head_ids(model)
    ids = [id(p) for group in groups for _, p in group]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    named = dict(model.named_parameters())
    assert all(named[n] is p for group in groups for n, p in group)
    # Stage groups follow the encoder's structure: the stem first, then stage by stage.
    assert all(n.startswith("encoder.model.") for group in groups[:-1] for n, _ in group)


def test_freezing_all_but_the_last_group_freezes_exactly_the_encoder():
    model = seg("test_resnet", decoder="unet")
    model.train()
    freeze_groups(layer_groups(model), -1)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == decoder_and_head_ids(model)
    assert batchnorm_to_eval(model) > 0  # the decoder's BatchNorms still train
    encoder_bns = [m for m in model.encoder.modules() if isinstance(m, nn.BatchNorm2d)]
    decoder_bns = [m for m in model.decoder.modules() if isinstance(m, nn.BatchNorm2d)]
    assert encoder_bns and not any(m.training for m in encoder_bns)
    assert decoder_bns and all(m.training for m in decoder_bns)


def test_weight_decay_names_and_cnn():
    model = seg("test_resnet", decoder="unet")
    names = norm_and_bias_param_names(model)
    assert "decoder.blocks.0.conv1.1.weight" in names  # a decoder BatchNorm
    assert "segmentation_head.0.bias" in names
    assert "segmentation_head.0.weight" not in names
    assert is_cnn(model)


# --------------------------------------------------------------------------- checkpointing


@pytest.mark.parametrize("decoder", DECODERS)
def test_checkpoint_units_are_encoder_then_decoder_blocks(decoder):
    model = seg("test_resnet", decoder=decoder)
    units = checkpoint_units(model)
    assert model_stages(model) == units
    encoder_blocks = [m for m in model.encoder.modules() if type(m).__name__ == "BasicBlock"]
    encoder_blocks += [m for m in model.encoder.modules() if type(m).__name__ == "Bottleneck"]
    n_decoder = {"unet": 5, "fpn": 8, "deeplabv3plus": 3}[decoder]
    assert len(units) == 4 + n_decoder
    assert {id(u) for u in units[:4]} == {id(m) for m in encoder_blocks}
    decoder_ids = {id(m) for m in model.decoder.modules()}
    assert all(id(u) in decoder_ids for u in units[4:])


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("frozen_encoder", [False, True])
def test_checkpointing_keeps_outputs_and_gradients(decoder, frozen_encoder):
    plain, ckpt = seg("test_resnet", decoder=decoder), seg("test_resnet", decoder=decoder)
    # Eval-mode BatchNorm and fp32: the recomputed forward is the same computation.
    plain.eval()
    ckpt.eval()
    if frozen_encoder:
        for model in (plain, ckpt):
            freeze_groups(layer_groups(model), -1)
    keys = list(ckpt.state_dict())
    assert set_grad_checkpointing(ckpt) == "generic"
    assert list(ckpt.state_dict()) == keys
    assert all(type(u).__name__.startswith("Checkpointed") for u in checkpoint_units(ckpt))

    x = torch.randn(2, 3, 50, 70)
    out_plain, out_ckpt = plain(x), ckpt(x)
    torch.testing.assert_close(out_ckpt, out_plain)
    out_plain.square().mean().backward()
    out_ckpt.square().mean().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        if frozen_encoder and name.startswith("encoder."):
            assert p.grad is None and q.grad is None, name
        else:
            torch.testing.assert_close(q.grad, p.grad, msg=name)

    assert set_grad_checkpointing(ckpt, False) == "generic"
    assert not any(type(u).__name__.startswith("Checkpointed") for u in checkpoint_units(ckpt))
    assert set_grad_checkpointing(ckpt, False) == "generic"  # turning it off twice is harmless
