"""Segmentation prediction at full resolution: masks of the images' own size.

An image of any size is brought to the scale the model was trained at (its area made
that of the training ``size``, its aspect kept: exactly ``size`` when the aspects
agree), predicted by a sliding window of tiles of the training crop
(`snugfit.infer.sliding`), and the logits resized back to the image's own size before
the softmax: the mask has one class per pixel of the original image.

`predict_masks` does it for a list of images (Python: ``learn.predict(img)`` returns the
mask and the per-pixel probabilities); `predict_to_folder` writes ``DIR/<stem>.png``
(class indices, 8-bit) for each file, a colour overlay with ``overlay``, and, with a
CSV, each image's pixel share per class (``snugfit predict MODEL FILES --out DIR``).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from snugfit.data.augment import center_batch
from snugfit.data.decode import open_image
from snugfit.data.rle import encode
from snugfit.errors import SnugfitError, UnreadableImage
from snugfit.infer.interpret_seg import colour_masks
from snugfit.infer.sliding import sliding_window
from snugfit.sizes import as_hw


def working_size(hw: tuple[int, int], size) -> tuple[int, int]:
    """``hw`` scaled so its area is ``size``'s, its aspect kept (``size`` itself when the
    aspects agree within a pixel).

    >>> working_size((1400, 2100), (700, 1050)), working_size((100, 300), 200)
    ((700, 1050), (115, 346))
    """
    h, w = hw
    sh, sw = as_hw(size)
    scale = math.sqrt(sh * sw / (h * w))
    out = (max(1, round(h * scale)), max(1, round(w * scale)))
    return (sh, sw) if abs(out[0] - sh) <= 1 and abs(out[1] - sw) <= 1 else out


@torch.no_grad()
def predict_mask(learn, image, *, flip: bool = False, tiles: int = 4) -> tuple[Tensor, Tensor]:
    """``(mask (H, W) int64, probabilities (C, H, W))`` of one image (a path or a PIL
    image) at its own size ``(H, W)``."""
    pre = learn.preprocessing
    img = image.convert("RGB") if isinstance(image, Image.Image) else open_image(image)
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
    full = tuple(x.shape[-2:])
    x = center_batch(x[None].to(learn.device), working_size(full, pre.size), pre.mean, pre.std)
    learn.model.eval()
    logits = sliding_window(learn.eval_outputs, x[0], pre.train_input, batch=tiles, flip=flip)
    if tuple(logits.shape[-2:]) != full:
        logits = F.interpolate(logits[None], size=full, mode="bilinear", align_corners=False)[0]
    probs = learn.activation(logits[None])[0].cpu()
    return probs.argmax(dim=0), probs


def predict_masks(learn, images: Sequence, **kw) -> tuple[list[Tensor], list[Tensor]]:
    """`predict_mask` for each image: masks and probabilities, each at its image's size."""
    out = [predict_mask(learn, im, **kw) for im in images]
    return [m for m, _ in out], [p for _, p in out]


@dataclass
class FolderSummary:
    """What `predict_to_folder` wrote, and the files it could not read."""

    out: Path
    n_images: int
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def line(self) -> str:
        bad = f", {len(self.skipped)} unreadable" if self.skipped else ""
        return f"predicted {self.n_images - len(self.skipped)} of {self.n_images} masks{bad}: {self.out}"


def predict_to_folder(
    learn,
    files: Sequence[str],
    out: str | os.PathLike | None,
    *,
    overlay: bool = False,
    csv_path: str | os.PathLike | None = None,
    flip: bool = False,
    tiles: int = 4,
    rle_path: str | os.PathLike | None = None,
    rle_rows: bool = False,
) -> FolderSummary:
    """Write each file's mask as ``out/<stem>.png`` (and ``<stem>_overlay.png``; no
    files when ``out`` is None); with ``csv_path``, a row per file: path, the class of
    most pixels, its share, each class's share, and an error (unreadable files get a
    row with the reason); with ``rle_path``, the masks run-length encoded (`RleWriter`;
    ``rle_rows``: pixels numbered along the rows)."""
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
    where = out if out is not None else Path(csv_path or rle_path or ".")
    summary = FolderSummary(where, len(files))
    rows = []
    encoded = RleWriter(learn.vocab, column_major=not rle_rows)
    for path in files:
        try:
            mask, probs = predict_mask(learn, path, flip=flip, tiles=tiles)
        except UnreadableImage as e:
            summary.skipped.append((path, e.reason))
            rows.append([path, "", "", *([""] * len(learn.vocab)), e.reason])
            continue
        encoded.add(Path(path).name, mask)
        stem = Path(path).stem
        if out is not None:
            Image.fromarray(learn.task.mask_file(mask)).save(out / f"{stem}.png")
        if out is not None and overlay:
            _overlay(path, mask, len(learn.vocab)).save(out / f"{stem}_overlay.png")
        label, top = learn.task.csv_cells(probs, learn.vocab)
        shares = learn.task.csv_values(probs)
        rows.append([path, label, f"{top:.6g}", *(f"{s:.6g}" for s in shares), ""])
    if csv_path is not None:
        _write_csv(Path(csv_path), learn.vocab, rows)
    if rle_path is not None:
        encoded.write(Path(rle_path))
    return summary


class RleWriter:
    """Predicted masks as a CSV of run-length encodings, as Kaggle's segmentation
    competitions take them: ``ImageId,ClassId,EncodedPixels``, a row per image and class
    (an empty cell where the class is absent), class 0 left out when it is named
    ``background`` (a mask's rest); pixels numbered down the columns (`snugfit.data.rle`)."""

    def __init__(self, vocab: Sequence[str], column_major: bool = True):
        first = 1 if vocab and vocab[0].lower() == "background" else 0
        self.classes = list(enumerate(vocab))[first:]
        self.column_major = column_major
        self.rows: list[list[str]] = []

    def add(self, name: str, mask: Tensor) -> None:
        m = mask.numpy()
        for k, label in self.classes:
            self.rows.append([name, label, encode(m == k, self.column_major)])

    def write(self, path: Path) -> None:
        try:
            with path.open("w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["ImageId", "ClassId", "EncodedPixels"])
                writer.writerows(self.rows)
        except OSError as e:
            raise SnugfitError(f"{path}: cannot write the CSV ({e.strerror})") from None


def _overlay(path: str, mask: Tensor, n_classes: int, alpha: float = 0.45) -> Image.Image:
    img = np.asarray(open_image(path), dtype=np.float32) / 255
    colours = colour_masks(mask, n_classes).permute(1, 2, 0).numpy()
    blend = np.where(mask.numpy()[..., None] == 0, img, (1 - alpha) * img + alpha * colours)
    return Image.fromarray((blend * 255).round().astype(np.uint8), "RGB")


def _write_csv(path: Path, vocab: Sequence[str], rows: list[list]) -> None:
    try:
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label", "share", *(f"share_{c}" for c in vocab), "error"])
            writer.writerows(rows)
    except OSError as e:
        raise SnugfitError(f"{path}: cannot write the CSV ({e.strerror})") from None
