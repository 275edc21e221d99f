"""Prediction at full resolution: a sliding window of overlapping tiles.

A segmentation model trained on crops (say 512x512) predicts an image of any size
(1400x2100, or larger) tile by tile: tiles of the training crop's size overlap by
about a quarter (`tile_starts`), each tile's logits are weighted by a window that
falls off towards the tile's edges (the centre of a tile sees the most context),
and the weighted logits are summed and divided by the summed weights (`blend`).
An image no larger than a tile goes through in one piece. With ``flip`` each tile
is also predicted mirrored and the two averaged (test-time augmentation). Tiles go
through the model ``batch`` at a time (the caller sizes it to the memory budget).

>>> tile_starts(10, 4, 0.25)
[0, 3, 6]
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from snugfit.sizes import Size, as_hw


def tile_starts(length: int, tile: int, overlap: float = 0.25) -> list[int]:
    """Where tiles of ``tile`` pixels start so that they cover ``length`` pixels,
    overlapping by about ``overlap`` of a tile; the last tile ends at ``length``."""
    if length <= tile:
        return [0]
    stride = max(1, math.floor(tile * (1 - overlap)))
    starts = list(range(0, length - tile, stride))
    return [*starts, length - tile]


def window(h: int, w: int, device=None) -> Tensor:
    """A ``(h, w)`` weight that is 1 in the middle and falls linearly to a small
    positive value at the edges (so every pixel keeps some weight)."""

    def ramp(n: int) -> Tensor:
        i = torch.arange(n, device=device, dtype=torch.float32)
        dist = torch.minimum(i + 1, n - i) / ((n + 1) / 2)  # 1/n at the ends, 1 in the middle
        return dist.clamp(max=1.0)

    return ramp(h)[:, None] * ramp(w)[None, :]


@torch.no_grad()
def sliding_window(
    forward: Callable[[Tensor], Tensor],
    image: Tensor,
    tile: Size,
    *,
    overlap: float = 0.25,
    batch: int = 4,
    flip: bool = False,
) -> Tensor:
    """The blended logits ``(C, H, W)`` of ``image`` ``(3, H, W)`` (normalised).

    Args:
        forward: logits ``(N, C, h, w)`` of a batch of tiles ``(N, 3, h, w)``.
        image: one normalised image, on the model's device.
        tile: the tile size (the training crop), a side or ``(height, width)``.
        overlap: the fraction of a tile that neighbouring tiles share.
        batch: tiles per forward.
        flip: also predict each tile mirrored (left-right) and average the two.
    """
    _, height, width = image.shape
    th, tw = min(as_hw(tile)[0], height), min(as_hw(tile)[1], width)
    boxes = [
        (y, x) for y in tile_starts(height, th, overlap) for x in tile_starts(width, tw, overlap)
    ]
    weight = (
        window(th, tw, image.device) if len(boxes) > 1 else torch.ones(th, tw, device=image.device)
    )
    total = weights = None
    for i in range(0, len(boxes), batch):
        chunk = boxes[i : i + batch]
        tiles = torch.stack([image[:, y : y + th, x : x + tw] for y, x in chunk])
        logits = forward(tiles).float()
        if flip:
            logits = (logits + forward(tiles.flip(-1)).float().flip(-1)) / 2
        if total is None:
            total = torch.zeros(logits.shape[1], height, width, device=logits.device)
            weights = torch.zeros(height, width, device=logits.device)
        for (y, x), out in zip(chunk, logits, strict=True):
            total[:, y : y + th, x : x + tw] += out * weight
            weights[y : y + th, x : x + tw] += weight
    if len(boxes) == 1:
        return total  # one tile: its logits as they are
    return total / weights
