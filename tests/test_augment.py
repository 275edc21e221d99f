from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from snugfit.data.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    affine_params,
    batch_augment,
    center_batch,
    denormalize,
    normalize,
)

NO_AUG = {"min_scale": 1.0, "max_rotate": 0.0, "flip": False, "max_lighting": 0.0}


def _batch(b=6, h=48, w=48, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, h, w), generator=g, dtype=torch.uint8)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_affine_params_shape_and_identity_when_disabled():
    theta = affine_params(5, min_scale=1.0, max_rotate=0.0, flip=False, generator=_gen(0))
    assert theta.shape == (5, 2, 3) and theta.dtype == torch.float32
    identity = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(5, 2, 3)
    torch.testing.assert_close(theta, identity)


def test_affine_params_crop_area_and_bounds():
    theta = affine_params(2000, min_scale=0.5, max_rotate=0.0, flip=True, generator=_gen(1))
    a, t = theta[:, :, :2], theta[:, :, 2]
    area = a.det().abs()
    assert area.min() >= 0.5 - 1e-5 and area.max() <= 1 + 1e-5
    # Without rotation the crop (centre t, half-extents |a_00|, |a_11|) stays inside [-1, 1].
    half = torch.stack([a[:, 0, 0].abs(), a[:, 1, 1].abs()], dim=1)
    assert (t.abs() + half).max() <= 1 + 1e-5
    # About half are flipped (negative determinant), and aspect ratios stay in range.
    flipped = (a.det() < 0).float().mean().item()
    assert 0.4 < flipped < 0.6
    ratio = half[:, 0] / half[:, 1]
    assert ratio.min() >= 3 / 4 - 1e-4 and ratio.max() <= 4 / 3 + 1e-4


def test_affine_params_rotation_range():
    theta = affine_params(500, min_scale=1.0, max_rotate=10.0, flip=False, generator=_gen(2))
    angle = torch.atan2(theta[:, 1, 0], theta[:, 0, 0]) * 180 / math.pi
    assert angle.abs().max() <= 10 + 1e-4
    assert angle.abs().max() > 8  # the range is actually used


def test_batch_augment_shape_dtype_and_range():
    x = _batch()
    out = batch_augment(x, 32, generator=_gen(0), mean=(0, 0, 0), std=(1, 1, 1))
    assert out.shape == (6, 3, 32, 32) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1  # clamped before normalising


def test_batch_augment_reproducible_under_seed():
    x = _batch()
    a = batch_augment(x, 32, generator=_gen(7))
    b = batch_augment(x, 32, generator=_gen(7))
    c = batch_augment(x, 32, generator=_gen(8))
    assert torch.equal(a, b)
    assert (a - c).abs().mean() > 0.05


def test_batch_augment_without_augmentation_is_a_plain_resize():
    x = _batch(h=48, w=48)
    out = batch_augment(x, 40, generator=_gen(0), **NO_AUG)
    ref = F.interpolate(x.float() / 255, size=(40, 40), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, normalize(ref, IMAGENET_MEAN, IMAGENET_STD), atol=1e-4, rtol=0)


def test_batch_augment_flip_mirrors_exactly():
    x = _batch(b=16, h=32, w=32)
    out = batch_augment(x, 32, generator=_gen(3), **{**NO_AUG, "flip": True})
    plain = center_batch(x, 32)
    same = [(o - p).abs().max().item() < 1e-4 for o, p in zip(out, plain, strict=True)]
    mirrored = [(o - p.flip(-1)).abs().max().item() < 1e-4 for o, p in zip(out, plain, strict=True)]
    assert all(s or m for s, m in zip(same, mirrored, strict=True))
    assert 0 < sum(mirrored) < 16


def test_batch_augment_lighting_changes_brightness_per_image():
    x = torch.full((32, 3, 16, 16), 128, dtype=torch.uint8)
    flat = {**NO_AUG, "max_lighting": 0.2}
    out = batch_augment(x, 16, generator=_gen(0), mean=(0, 0, 0), std=(1, 1, 1), **flat)
    per_image = out.mean(dim=(1, 2, 3))
    # A flat image has no contrast to change: only brightness, within 1 ± 0.2.
    assert per_image.min() >= 128 / 255 * 0.8 - 1e-5
    assert per_image.max() <= 128 / 255 * 1.2 + 1e-5
    assert per_image.std() > 0.02


def test_center_batch_normalises_and_resizes_only_when_needed():
    x = _batch(h=32, w=32)
    out = center_batch(x, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    torch.testing.assert_close(out, (x.float() / 255 - 0.5) / 0.25)
    small = center_batch(x, 16)
    assert small.shape == (6, 3, 16, 16) and small.dtype == torch.float32


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (3, 3, 5, 7)])
def test_normalize_denormalize_round_trip(shape):
    x = torch.rand(shape)
    y = normalize(x, IMAGENET_MEAN, IMAGENET_STD)
    assert not torch.allclose(x, y)
    torch.testing.assert_close(denormalize(y, IMAGENET_MEAN, IMAGENET_STD), x)
    # Channel 0: (x - 0.485) / 0.229.
    torch.testing.assert_close(y[:, 0], (x[:, 0] - 0.485) / 0.229)


def test_sampling_grid_equals_affine_grid():
    from snugfit.data.augment import _sampling_grid

    theta = affine_params(5, generator=torch.Generator().manual_seed(1))
    for size in (7, 32):
        expected = F.affine_grid(theta, [5, 3, size, size], align_corners=False)
        assert torch.allclose(_sampling_grid(theta, size), expected, atol=1e-6)


def test_extent_windows_fit_in_the_image_and_keep_the_draws():
    # Crops out of a larger image (segmentation): a window of (0.4, 0.25) of the input at
    # scale 1, zoomed in down to half its area; the random stream is used as without it.
    g1, g2 = _gen(4), _gen(4)
    affine_params(500, min_scale=0.5, max_rotate=0.0, generator=g1)
    theta = affine_params(500, min_scale=0.5, max_rotate=0.0, generator=g2, extent=(0.4, 0.25))
    assert torch.equal(g1.get_state(), g2.get_state())
    a, t = theta[:, :, :2], theta[:, :, 2]
    half = torch.stack([a[:, 0, 0].abs(), a[:, 1, 1].abs()], dim=1)
    assert (t.abs() + half).max() <= 1 + 1e-5  # inside the image
    area = a.det().abs() / (0.4 * 0.25)
    assert area.min() >= 0.5 - 1e-5 and area.max() <= 1 + 1e-5
    assert t.abs().max() > 0.5  # placed anywhere in the image, not only the centre
    whole = affine_params(50, generator=_gen(9))
    assert torch.equal(whole, affine_params(50, generator=_gen(9), extent=(1.0, 1.0)))
