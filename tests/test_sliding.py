"""Sliding-window prediction: overlapping tiles, blended logits."""

import itertools

import torch
from torch import nn

from snugfit.infer.sliding import sliding_window, tile_starts, window


def conv_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()


def test_tiles_cover_the_image_and_overlap():
    for length, tile in [(10, 4), (2100, 512), (512, 512), (300, 512), (7, 3)]:
        starts = tile_starts(length, tile, 0.25)
        t = min(tile, length)
        covered = torch.zeros(length, dtype=torch.bool)
        for s in starts:
            covered[s : s + t] = True
        assert covered.all() and starts[-1] + t == length and starts == sorted(set(starts))
        if len(starts) > 1:
            assert min(b - a for a, b in itertools.pairwise(starts)) <= 0.75 * t
    w = window(5, 7)
    assert w.shape == (5, 7) and w.min() > 0 and w[2, 3] == 1 and w[0, 0] < w[2, 3]


def test_one_tile_is_the_whole_image_prediction():
    model = conv_model()
    image = torch.randn(3, 24, 40)
    whole = model(image[None])[0]
    out = sliding_window(model, image, (24, 40))
    assert torch.equal(out, whole)


def test_tiles_blend_to_the_whole_image_for_a_local_model():
    # A 1x1 convolution sees one pixel: every tile predicts exactly the whole image's
    # logits there, so any blend of them is the whole-image prediction.
    torch.manual_seed(0)
    model = nn.Conv2d(3, 4, 1).eval()
    image = torch.randn(3, 50, 70)
    out = sliding_window(model, image, (16, 24), overlap=0.25, batch=3, flip=True)
    assert out.shape == (4, 50, 70)
    assert torch.allclose(out, model(image[None])[0], atol=1e-5)
    # a model with context differs at tile seams, but stays close inside tiles
    ctx = conv_model()
    near = sliding_window(ctx, image, (16, 24))
    whole = ctx(image[None])[0]
    assert near.shape == whole.shape and not torch.equal(near, whole)
    assert torch.allclose(near[:, 4:12, 4:12], whole[:, 4:12, 4:12], atol=1e-5)
