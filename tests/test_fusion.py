"""BatchNorm folded into the convolution before it, for the frozen body's features."""

import timm
import torch
from torch import nn

from snugfit.models import fold_batchnorm
from snugfit.train import precompute as pre
from test_recipe import colour_learner


def trained_stats(model: nn.Module) -> nn.Module:
    """``model`` with BatchNorm statistics and affine parameters far from 0/1 (a fresh
    model's are the identity, which would hide a wrong fold)."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g))
    return model.eval()


def test_folding_keeps_the_outputs_and_leaves_the_model_alone():
    model = trained_stats(timm.create_model("test_efficientnet", num_classes=3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 48, 48)
    fused = fold_batchnorm(model, x[:1])
    assert fused is not model
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) > 5 and not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    with torch.no_grad():
        want, got = model(x), fused(x)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


class ConvUsedTwice(nn.Module):
    """A convolution's output feeds its BatchNorm and a residual: it cannot be folded."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


def test_a_fold_that_changes_the_outputs_is_not_used():
    model = trained_stats(ConvUsedTwice())
    assert fold_batchnorm(model, torch.randn(1, 3, 8, 8)) is model


def test_a_model_without_batchnorm_is_its_own_inference_body():
    vit = timm.create_model("test_vit", num_classes=2).eval()
    assert fold_batchnorm(vit, torch.randn(1, 3, 160, 160)) is vit


def test_features_come_from_the_folded_body(image_folder, monkeypatch):
    learn = colour_learner(image_folder)
    trained_stats(learn.model)
    ran = []
    real = learn.inference_net
    monkeypatch.setattr(learn, "inference_net", lambda x: ran.append(real(x)) or ran[-1])
    feats, targs = pre.compute_features(learn, learn.dls.valid)
    [body] = ran
    assert body is not learn.model and not any(
        isinstance(m, nn.BatchNorm2d) for m in body.modules()
    )
    learn.model.eval()
    with torch.no_grad():
        x = torch.cat([learn.prepare_input(xb) for xb, _ in learn.dls.valid])
        exact = learn.model.forward_head(learn.model.forward_features(x), pre_logits=True)
    assert feats.shape == exact.shape and len(targs) == len(exact)
    assert torch.allclose(feats, exact, rtol=1e-4, atol=1e-4)
