"""Batch prediction: many image files through a saved model, into a CSV.

Files are decoded in worker processes with the validation transform (as
`decode_valid` does for the validation set), batches are normalised on the device
and go through the model without a graph (from `FOLD_BATCHES` batches on, its copy
with BatchNorm folded into the convolutions). The batch size is ``bs`` when given;
else, on CUDA or with a memory budget, the largest batch whose predicted peak
(`snugfit.memory.eval_batch_size`, from a no-grad forward measured at batch 1 and
2) fits the budget (the whole card by default); else `CPU_BS`. An out-of-memory
error still halves the chunks the model sees (`Learner._eval_forward`).

The CSV has one row per file, in the order given (folders: their image files,
recursively, sorted), with the columns

* ``path``: the file;
* ``label``: the predicted class (multi-label models: the classes above the
  threshold, space-separated; possibly none);
* ``probability``: that class's probability (multi-label: the highest class
  probability);
* ``prob_<class>``: one column per class, in the model's class order; they sum to 1
  for a single-label model;
* ``error``: empty, or why the file could not be read; its other columns are then
  empty. Such files are never dropped.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from torch import Tensor

from snugfit.errors import SnugfitError
from snugfit.sizes import format_size

CPU_BS = 32  # the CPU batch without a budget: large enough to amortise the per-batch overhead
MAX_BS = 256  # the most a budget may choose: beyond it, decoding is the bottleneck anyway
FOLD_BATCHES = 4  # batches from which prediction folds BatchNorm first (`Learner.inference_net`)


@dataclass
class PredictSummary:
    """What `predict_to_csv` did: images seen, the batch used, and the files skipped."""

    csv: Path
    n_images: int
    bs: int
    bs_reason: str
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def n_predicted(self) -> int:
        return self.n_images - len(self.skipped)

    def line(self) -> str:
        """The final line: counts and where the CSV is."""
        bad = f", {len(self.skipped)} unreadable (rows with an error)" if self.skipped else ""
        return f"predicted {self.n_predicted} of {self.n_images} images{bad}: {self.csv}"


def image_inputs(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """Files to predict: each folder's image files (recursively, sorted), and each file as given.

    A file that does not exist stays in the list, so that it is reported as unreadable.
    """
    from snugfit.data.items import get_image_files

    files: list[str] = []
    for item in inputs:
        if Path(item).is_dir():
            found = get_image_files(item)
            if not found:
                raise SnugfitError(f"{item}: no image files in this folder")
            files.extend(str(p) for p in found)
        else:
            files.append(os.fspath(item))
    if not files:
        raise SnugfitError("nothing to predict: give image files or folders")
    return files


def predict_batch_size(learn, memory_budget: str | int | float | None = None) -> tuple[int, str]:
    """The prediction batch for ``learn``'s device and budget, and why (one line).

    On CUDA the budget defaults to the whole card; on the CPU, without a budget, the
    batch is `CPU_BS`.
    """
    from snugfit.memory import (
        GiB,
        MiB,
        eval_batch_size,
        format_bytes,
        parse_bytes,
        profile_eval,
    )

    device = learn.device
    on_cuda = device.type == "cuda"
    if memory_budget is None and not on_cuda:
        return CPU_BS, f"batch {CPU_BS} (the CPU default; --bs or --memory-budget to change)"
    total = torch.cuda.get_device_properties(device).total_memory if on_cuda else None
    budget = parse_bytes(total if memory_budget is None else memory_budget, total=total)
    size = learn.preprocessing.train_input  # a segmentation model predicts crop-sized tiles
    profile = profile_eval(
        learn.model,
        size,
        precision=learn.precision,
        channels_last=learn.channels_last,
        device=device,
    )
    tensors = (*learn.model.parameters(), *learn.model.buffers())
    static = sum(t.numel() * t.element_size() for t in tensors)
    reserved = 512 * MiB if on_cuda else 0  # the CUDA context, outside the allocator
    bs = eval_batch_size(static, profile, size, budget, reserved=reserved, max_bs=MAX_BS)
    per_image = format_bytes(profile.per_sample) if profile.per_sample < GiB else "over 1 GiB"
    return bs, (
        f"batch {bs}: the largest (up to {MAX_BS}) that fits {format_bytes(budget)} "
        f"({per_image} of activations per image at {format_size(size)} px, {learn.precision})"
    )


def predict_files(
    learn,
    files: Sequence[str],
    bs: int,
    *,
    num_workers: int | None = None,
    console: Console | None = None,
) -> Iterator[tuple[str, Tensor | None, str | None]]:
    """``(path, probabilities, None)`` or ``(path, None, reason)`` for each file, in order.

    Files are decoded in ``num_workers`` processes (default ``min(4, cpu count)``, none
    for a single batch), with a progress bar on a terminal.
    """
    from snugfit.data.augment import center_batch
    from snugfit.data.datasets import ImageDataset, make_dataloader
    from snugfit.data.progress import progress

    pre = learn.preprocessing
    n_batches = math.ceil(len(files) / bs)
    if num_workers is None:
        num_workers = min(4, os.cpu_count() or 1) if n_batches > 1 else 0
    num_workers = min(num_workers, n_batches)
    # Each item's "label" is its index, so rows come back in order, failures included.
    dataset = ImageDataset(
        [(Path(f), i) for i, f in enumerate(files)], False, pre.size, pre.crop_pct
    )
    loader = make_dataloader(dataset, batch_size=bs, num_workers=num_workers, device=learn.device)
    learn.model.eval()
    learn.set_memory("prediction batch", eval_bs=min(bs, learn.eval_bs or bs))  # halved on OOM
    console = console or Console(stderr=True)
    net = None  # BatchNorm folded for many batches: its check costs about two batches
    with progress(console, len(files), "predicting") as advance:
        for k, (x, index, bad) in enumerate(loader):
            start = k * bs
            rows: dict[int, tuple] = {}
            if x is not None:
                x = x.to(learn.device, non_blocking=True)
                x = center_batch(x, pre.size, pre.mean, pre.std)
                if net is None and n_batches >= FOLD_BATCHES:
                    net = learn.inference_net(x[:1])
                with torch.no_grad():
                    probs = learn.activation(learn.eval_outputs(x, net=net)).cpu()
                for i, p in zip(index.tolist(), probs, strict=True):
                    rows[i] = (files[i], p, None)
            # collate keeps the failures in order: they fill the batch's other indices.
            missing = [i for i in range(start, min(start + bs, len(files))) if i not in rows]
            for i, (_, reason) in zip(missing, bad, strict=True):
                rows[i] = (files[i], None, reason)
            yield from (rows[i] for i in sorted(rows))
            advance(len(rows))


def csv_header(vocab: Sequence[str]) -> list[str]:
    """The CSV's columns (see the module docstring).

    >>> csv_header(["cat", "dog"])
    ['path', 'label', 'probability', 'prob_cat', 'prob_dog', 'error']
    """
    return ["path", "label", "probability", *(f"prob_{c}" for c in vocab), "error"]


def csv_row(learn, path: str, probs: Tensor | None, error: str | None) -> list[str]:
    """One CSV row; probabilities with 6 significant digits."""
    vocab = learn.vocab
    if probs is None:
        return [path, "", "", *([""] * len(vocab)), error or ""]
    label, top = learn.task.csv_cells(probs, vocab)
    values = learn.task.csv_values(probs)  # class probabilities, or pixel shares per class
    return [path, label, f"{top:.6g}", *(f"{p:.6g}" for p in values), ""]


def predict_to_csv(
    learn,
    inputs: Sequence[str | os.PathLike],
    csv_path: str | os.PathLike,
    *,
    bs: int | None = None,
    memory_budget: str | int | float | None = None,
    num_workers: int | None = None,
    console: Console | None = None,
) -> PredictSummary:
    """Predict every image file of ``inputs`` (files and folders) into ``csv_path``.

    Args:
        learn: A `Learner` (e.g. from `load_learner`).
        inputs: Image files and folders (searched recursively).
        csv_path: The CSV to write (see the module docstring for its columns).
        bs: The batch size; None: chosen from ``memory_budget`` (see `predict_batch_size`).
        memory_budget: Device memory to fit in ("2GB", "2GiB", or 0.5 of the card).
        num_workers: Decoding processes.
        console: Where the progress bar goes (default: stderr).

    Returns:
        The counts, the batch size used and the unreadable files with their reasons.
    """
    files = image_inputs(inputs)
    if bs is not None:
        reason = f"batch {bs} (--bs)"
    else:
        bs, reason = predict_batch_size(learn, memory_budget)
    csv_path = Path(csv_path)
    summary = PredictSummary(csv_path, len(files), bs, reason)
    vocab = learn.infer_config["vocab"]
    try:
        out = csv_path.open("w", newline="")
    except OSError as e:
        raise SnugfitError(f"{csv_path}: cannot write the CSV ({e.strerror})") from None
    with out:
        writer = csv.writer(out)
        writer.writerow(csv_header(vocab))
        for path, probs, error in predict_files(
            learn, files, bs, num_workers=num_workers, console=console
        ):
            if error is not None:
                summary.skipped.append((path, error))
            writer.writerow(csv_row(learn, path, probs, error))
    return summary


def predict_outputs(
    learn,
    inputs: Sequence[str | os.PathLike],
    *,
    csv_path: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    overlay: bool = False,
    flip: bool = False,
    bs: int | None = None,
    memory_budget: str | int | float | None = None,
    num_workers: int | None = None,
    rle: str | os.PathLike | None = None,
    rle_rows: bool = False,
):
    """Predict every image of ``inputs`` into a CSV (``csv_path``) and, for a
    segmentation model, a mask per image in the folder ``out`` and their run-length
    encodings in the CSV ``rle`` (``rle_rows``: pixels numbered along the rows): the
    task's writer (`WRITERS`). Returns a summary with ``line()`` and ``skipped``."""
    files = image_inputs(inputs)
    write = WRITERS.get(learn.task.name, _classes_csv)
    return write(learn, files, csv_path=csv_path, out=out, overlay=overlay, flip=flip, bs=bs,
                 memory_budget=memory_budget, num_workers=num_workers, rle=rle,
                 rle_rows=rle_rows)  # fmt: skip


def _classes_csv(
    learn, files, *, csv_path, out, overlay, flip, bs, memory_budget, num_workers, rle, rle_rows
):
    if out is not None or overlay or flip or rle is not None or rle_rows:
        raise SnugfitError(
            "--out, --overlay, --flip, --rle: masks at full resolution, for segmentation "
            "models; this model is a classifier: use --csv"
        )
    return predict_to_csv(learn, files, csv_path, bs=bs, memory_budget=memory_budget,
                          num_workers=num_workers)  # fmt: skip


def _masks(
    learn, files, *, csv_path, out, overlay, flip, bs, memory_budget, num_workers, rle, rle_rows
):
    from snugfit.infer.predict_seg import predict_to_folder

    if out is None and overlay:
        raise SnugfitError("--overlay: give --out DIR for the overlays")
    if rle_rows and rle is None:
        raise SnugfitError("--rle-rows: give --rle FILE for the encodings")
    tiles = bs if bs is not None else predict_batch_size(learn, memory_budget)[0]
    return predict_to_folder(
        learn, files, out, overlay=overlay, csv_path=csv_path, flip=flip, tiles=tiles,
        rle_path=rle, rle_rows=rle_rows,
    )  # fmt: skip


# How each task's predictions are written: a CSV row per image for classifiers; a mask
# file per image (and pixel shares in the CSV) for segmentation models.
WRITERS = {"segmentation": _masks}
