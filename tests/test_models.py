"""Tests for snugfit.models: creation, weight loading, layer groups, config."""

from __future__ import annotations

import builtins

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from snugfit.errors import SnugfitError
from snugfit.models import (
    convert_by_order,
    create_model,
    group_names,
    is_norm,
    layer_groups,
    load_weights,
    model_config,
    norm_and_bias_param_names,
    packaged_lite0_weights,
)


def tiny(arch: str = "test_resnet", n_out: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return create_model(arch, n_out, pretrained=False)


def assert_state_equal(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def efficientnet_pytorch_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a timm efficientnet state dict the efficientnet-pytorch way, keeping order."""
    renames = {"conv_stem": "_conv_stem", "blocks": "_blocks", "classifier": "_fc"}
    out = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        out[f"{renames.get(head, '_' + head)}.{rest}"] = value
    return out


# --------------------------------------------------------------------------- layer groups


@pytest.mark.parametrize(
    ("arch", "names"),
    [
        ("test_resnet", ["stem", "stage1", "stage2", "stage3", "stage4", "head"]),
        # conv_head/bn2 join the last stage (timm's "match previous group").
        ("test_efficientnet", ["stem", *[f"stage{i}" for i in range(1, 6)], "head"]),
        # The final norm joins the last block group the same way.
        ("test_vit", ["stem", *[f"stage{i}" for i in range(1, 7)], "head"]),
        # head.norm is not matched by timm's matcher: a neck group before the classifier.
        ("test_convnext", ["stem", "stage1", "stage2", "stage3", "stage4", "neck", "head"]),
    ],
)
def test_layer_groups_of_timm_models(arch, names):
    model = tiny(arch)
    groups = layer_groups(model)
    assert group_names(model) == names
    assert len(groups) == len(names)
    assert all(groups), "no empty group"

    # Every parameter exactly once, in module order within the body.
    flat = [p for group in groups for _, p in group]
    assert len(flat) == len({id(p) for p in flat}) == len(list(model.parameters()))
    assert {id(p) for p in flat} == {id(p) for p in model.parameters()}

    # The head is exactly the (new) classifier.
    head_ids = [id(p) for _, p in groups[-1]]
    assert head_ids == [id(p) for p in model.get_classifier().parameters()]
    assert groups[-1][0][1].shape[0] == 3

    # Names are the model's own parameter names.
    named = dict(model.named_parameters())
    assert all(named[n] is p for group in groups for n, p in group)


def test_layer_groups_stem_and_stages_resnet():
    groups = layer_groups(tiny("test_resnet"))
    assert all(n.startswith("conv1") or n.startswith("bn1") for n, _ in groups[0])
    for i in range(1, 5):
        assert all(n.startswith(f"layer{i}.") for n, _ in groups[i])
    assert [n for n, _ in groups[-1]] == ["fc.weight", "fc.bias"]


def test_layer_groups_convnext_keeps_head_norm_out_of_head():
    groups = layer_groups(tiny("test_convnext"))
    assert [n for n, _ in groups[-2]] == ["head.norm.weight", "head.norm.bias"]
    assert [n for n, _ in groups[-1]] == ["head.fc.weight", "head.fc.bias"]


def test_layer_groups_fallback_for_plain_sequential():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 8, 3),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 2),
    )
    groups = layer_groups(model)
    assert group_names(model) == ["body1", "body2", "head"]
    assert [[n for n, _ in g] for g in groups] == [
        ["0.weight", "0.bias"],
        ["1.weight", "1.bias", "3.weight", "3.bias"],
        ["6.weight", "6.bias"],
    ]
    assert groups[-1][0][1] is model[6].weight


def test_layer_groups_fallback_single_body_group():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.ReLU(), nn.Linear(4, 2))
    assert group_names(model) == ["body", "head"]
    groups = layer_groups(model)
    assert [n for n, _ in groups[0]] == ["1.weight", "1.bias"]
    assert groups[1][0][1] is model[3].weight


def test_layer_groups_without_classifier_is_an_error():
    with pytest.raises(SnugfitError, match="no classifier"):
        layer_groups(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))


# --------------------------------------------------------------------------- create_model


@pytest.mark.parametrize("arch", ["test_resnet", "test_efficientnet"])
def test_create_model_has_n_out_logits(arch):
    model = tiny(arch, n_out=3).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 3)


def test_create_model_resets_a_given_timm_module():
    model = timm.create_model("test_resnet", pretrained=False, num_classes=10)
    same = create_model(model, 4)
    assert same is model
    assert model.get_classifier().out_features == 4


def test_create_model_keeps_a_plain_module():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    assert create_model(model, 3) is model
    assert model[1].out_features == 5


def test_create_model_unknown_arch_suggests_close_names():
    with pytest.raises(SnugfitError, match="unknown timm model 'resnet5'") as info:
        create_model("resnet5", 2, pretrained=False)
    assert "resnet50" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("n_out", [0, -1, 2.5, True])
def test_create_model_rejects_bad_n_out(n_out):
    with pytest.raises(SnugfitError, match="n_out"):
        create_model("test_resnet", n_out, pretrained=False)


def test_create_model_from_local_full_checkpoint(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model("test_resnet", pretrained=False)  # default 1000 classes
    path = tmp_path / "full.safetensors"
    save_file(source.state_dict(), str(path))

    model = create_model("test_resnet", 3, weights=path)
    assert model.get_classifier().out_features == 3
    src = source.state_dict()
    for key, value in model.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(value, src[key]), key


def test_create_model_weights_of_wrong_arch_fail(tmp_path):
    path = tmp_path / "eff.safetensors"
    save_file(timm.create_model("test_efficientnet", pretrained=False).state_dict(), str(path))
    with pytest.raises(SnugfitError, match=r"eff\.safetensors: keys do not match"):
        create_model("test_resnet", 3, weights=path)


# --------------------------------------------------------------------------- load_weights


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".pt", ".bin"])
def test_load_weights_round_trip(tmp_path, suffix):
    source = tiny("test_efficientnet")
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(source.state_dict(), str(path))
    else:
        torch.save(source.state_dict(), path)

    torch.manual_seed(123)
    fresh = create_model("test_efficientnet", 3, pretrained=False)
    assert not torch.equal(fresh.conv_stem.weight, source.conv_stem.weight)
    load_weights(fresh, path)
    assert_state_equal(fresh, source)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {f"module.{k}": v for k, v in sd.items()},
        lambda sd: {"state_dict": sd, "epoch": 3},
        lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}, "optimizer": {}},
    ],
    ids=["module-prefix", "state_dict", "model-and-prefix"],
)
def test_load_weights_unwraps_containers(tmp_path, wrap):
    source = tiny("test_resnet")
    path = tmp_path / "wrapped.pth"
    torch.save(wrap(source.state_dict()), path)
    fresh = create_model("test_resnet", 3, pretrained=False)
    load_weights(fresh, path)
    assert_state_equal(fresh, source)


def test_load_weights_tolerates_missing_batch_counters(tmp_path):
    source = tiny("test_resnet")
    state = {k: v for k, v in source.state_dict().items() if "num_batches_tracked" not in k}
    path = tmp_path / "old.pth"
    torch.save(state, path)
    fresh = create_model("test_resnet", 3, pretrained=False)
    load_weights(fresh, path)
    assert torch.equal(fresh.fc.weight, source.fc.weight)


def test_load_weights_wrong_shape_names_the_tensor(tmp_path):
    state = tiny("test_resnet").state_dict()
    state["layer2.0.conv1.weight"] = torch.zeros(1, 2, 3, 3)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    model = tiny("test_resnet")
    before = model.fc.weight.clone()
    with pytest.raises(SnugfitError, match=r"layer2\.0\.conv1\.weight") as info:
        load_weights(model, path)
    assert "(1, 2, 3, 3)" in str(info.value)
    assert "bad.safetensors" in str(info.value)
    # Nothing was loaded.
    assert torch.equal(model.fc.weight, before)


def test_load_weights_unrelated_keys_name_the_file(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(2, 2), "decoder.bias": torch.zeros(2)}, path)
    with pytest.raises(SnugfitError, match=r"other\.pth: keys do not match") as info:
        load_weights(tiny("test_resnet"), path)
    message = str(info.value)
    assert "encoder.weight" in message and "conv1.0.weight" in message


class Payload:
    """Unpickling this creates a marker file: it stands for arbitrary code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def test_load_weights_refuses_code_in_pickles(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"conv1.0.weight": torch.zeros(1), "payload": Payload(marker)}, path)

    with pytest.raises(SnugfitError, match=r"evil\.pth: not a plain state dict"):
        load_weights(tiny("test_resnet"), path)
    assert not marker.exists()

    # The payload is live: full unpickling would have run it.
    loaded = torch.load(path, weights_only=False)
    loaded["payload"].close()
    assert marker.exists()


class Custom:
    def __init__(self):
        self.weights = torch.zeros(3)


def test_load_weights_refuses_custom_objects(tmp_path):
    path = tmp_path / "custom.pt"
    torch.save(Custom(), path)
    with pytest.raises(SnugfitError, match=r"custom\.pt: not a plain state dict"):
        load_weights(tiny("test_resnet"), path)


def test_load_weights_bad_files(tmp_path):
    model = tiny("test_resnet")
    with pytest.raises(SnugfitError, match=r"missing\.pth: weights file not found"):
        load_weights(model, tmp_path / "missing.pth")

    other = tmp_path / "weights.npz"
    other.write_bytes(b"x")
    with pytest.raises(SnugfitError, match=r"unsupported weights file type '\.npz'"):
        load_weights(model, other)

    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not safetensors")
    with pytest.raises(SnugfitError, match=r"broken\.safetensors: not a readable safetensors"):
        load_weights(model, broken)

    scalar = tmp_path / "scalar.pth"
    torch.save({"lr": 0.1}, scalar)
    with pytest.raises(SnugfitError, match="entry 'lr' is not a tensor"):
        load_weights(model, scalar)


def test_load_weights_converts_efficientnet_pytorch_files(tmp_path):
    source = tiny("test_efficientnet")
    path = tmp_path / "effnet_pytorch.pth"
    torch.save(efficientnet_pytorch_names(source.state_dict()), path)

    torch.manual_seed(5)
    fresh = create_model("test_efficientnet", 3, pretrained=False)
    load_weights(fresh, path)
    assert_state_equal(fresh, source)


# --------------------------------------------------------------------------- convert_by_order


def test_convert_by_order_round_trip():
    dst = tiny("test_efficientnet").state_dict()
    src = efficientnet_pytorch_names(dst)
    assert list(src)[:2] == ["_conv_stem.weight", "_bn1.weight"]
    assert "_fc.weight" in src
    assert any(k.startswith("_blocks.0.0.") for k in src)

    out = convert_by_order(src, dst)
    assert list(out) == list(dst)
    assert all(torch.equal(out[k], dst[k]) for k in dst)


def test_convert_by_order_names_the_first_shape_mismatch():
    dst = tiny("test_efficientnet").state_dict()
    src = efficientnet_pytorch_names(dst)
    src["_bn1.running_mean"] = torch.zeros(99)
    index = list(src).index("_bn1.running_mean")
    with pytest.raises(SnugfitError) as info:
        convert_by_order(src, dst)
    message = str(info.value)
    assert message.startswith(f"tensor {index}: _bn1.running_mean (99,) does not match bn1.running")
    assert f"source has {len(src)} tensors, model {len(dst)}" in message


def test_convert_by_order_count_mismatch():
    dst = tiny("test_efficientnet").state_dict()
    src = efficientnet_pytorch_names(dst)
    src.pop("_fc.bias")
    with pytest.raises(SnugfitError, match=f"source has {len(dst) - 1} tensors but the model"):
        convert_by_order(src, dst)


# --------------------------------------------------------------------------- config & decay


def test_model_config_from_timm_and_defaults():
    config = model_config(tiny("test_efficientnet"))
    assert config == {
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "crop_pct": 0.95,
        "input_size": 160,
        "interpolation": "bicubic",
    }
    assert model_config(tiny("test_vit"))["mean"] == (0.5, 0.5, 0.5)
    assert model_config(nn.Linear(2, 2)) == {
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "crop_pct": 0.875,
        "input_size": 224,
        "interpolation": "bilinear",
    }


def test_is_norm():
    assert is_norm(nn.BatchNorm2d(3))
    assert is_norm(nn.InstanceNorm2d(3, affine=True))
    assert is_norm(nn.LayerNorm(3))
    assert is_norm(nn.GroupNorm(1, 3))
    assert is_norm(timm.layers.LayerNorm2d(3))
    assert is_norm(timm.layers.BatchNormAct2d(3))
    assert not is_norm(nn.Conv2d(3, 3, 1))
    assert not is_norm(nn.Linear(3, 3))


def test_norm_and_bias_param_names():
    model = tiny("test_convnext")
    names = norm_and_bias_param_names(model)
    params = dict(model.named_parameters())
    assert names <= set(params)
    assert {"stem.1.weight", "stem.1.bias", "head.norm.weight", "head.fc.bias"} <= names
    assert all(n in names for n in params if n.endswith("bias"))
    # Convolution and linear weights keep their weight decay.
    assert "stem.0.weight" not in names
    assert "head.fc.weight" not in names

    resnet = tiny("test_resnet")
    names = norm_and_bias_param_names(resnet)
    decayed = {n for n, p in resnet.named_parameters() if n not in names}
    assert decayed == {n for n, p in resnet.named_parameters() if p.ndim > 1}


# --------------------------------------------------------------------------- real weights


@pytest.mark.slow
def test_packaged_lite0_weights_convert_exactly():
    path = packaged_lite0_weights()
    src = torch.load(path, map_location="cpu", weights_only=True)
    assert len(src) == 296

    # Before the classifier is replaced, every tensor is the file's, in order.
    full = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    load_weights(full, path)
    dst = full.state_dict()
    assert len(dst) == 296
    for (s_key, s_val), (d_key, d_val) in zip(src.items(), dst.items(), strict=True):
        assert torch.equal(s_val, d_val), (s_key, d_key)
    assert torch.equal(dst["conv_stem.weight"], src["_conv_stem.weight"])
    assert torch.equal(dst["classifier.weight"], src["_fc.weight"])

    model = create_model("tf_efficientnet_lite0", 2, weights=path).eval()
    assert torch.equal(model.conv_stem.weight, src["_conv_stem.weight"])
    assert model.get_classifier().out_features == 2
    with torch.no_grad():
        assert model(torch.randn(2, 3, 224, 224)).shape == (2, 2)
    assert group_names(model)[0] == "stem" and group_names(model)[-1] == "head"
    assert len(layer_groups(model)) == 9  # stem + 7 stages + head


@pytest.mark.slow
def test_pretrained_lite0_uses_the_packaged_weights_offline():
    model = create_model("tf_efficientnet_lite0", 2, pretrained=True)
    ref = create_model("tf_efficientnet_lite0", 2, weights=packaged_lite0_weights())
    stem = model.state_dict()["conv_stem.weight"]
    assert torch.equal(stem, ref.state_dict()["conv_stem.weight"])


def test_imagenet_rows_match_class_names():
    from snugfit.models import imagenet_rows

    assert imagenet_rows(["ants", "bees"]) == [310, 309]
    assert imagenet_rows(["tench", "English_springer", "n03888257"]) == [0, 217, 701]
    assert imagenet_rows(["daisies"]) == [985]  # -ies -> y
    assert imagenet_rows(["ants", "banana split"]) is None  # one unknown: no match at all
    assert imagenet_rows(["ant", "ants"]) is None  # two names for one class


def test_head_starts_from_imagenet_rows_when_classes_match(tmp_path):
    torch.manual_seed(0)
    src = timm.create_model("test_efficientnet", num_classes=1000)
    path = tmp_path / "in1k.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    model = create_model("test_efficientnet", 2, weights=path, vocab=["ants", "bees"])
    head = model.get_classifier()
    assert torch.equal(head.weight, src.get_classifier().weight[[310, 309]])
    assert torch.equal(head.bias, src.get_classifier().bias[[310, 309]])
    # unknown names, or head_init="random": a fresh head
    for kw in (
        {"vocab": ["cats", "zebra crossing"]},
        {"vocab": ["ants", "bees"], "head_init": "random"},
    ):
        other = create_model("test_efficientnet", 2, weights=path, **kw)
        assert not torch.equal(other.get_classifier().weight, head.weight)
    with pytest.raises(SnugfitError, match="head_init"):
        create_model("test_efficientnet", 2, weights=path, head_init="imagenet")
