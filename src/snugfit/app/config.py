"""The configuration of a training run: one dataclass, mapped onto by the CLI.

The resolved configuration is written as ``config.json`` next to every run's
outputs, so a run can be understood (and repeated) from its folder alone.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from snugfit.saving.atomic import atomic_write


@dataclass
class TrainConfig:
    data: str
    arch: str = "tf_efficientnet_lite0"
    recipe: str = "auto"  # "auto": the automated checklist (auto_fit); or "fine_tune"
    epochs: int | None = None  # unfrozen epochs (None: auto 2, 8 for segmentation; fine_tune 2)
    freeze_epochs: int = 1  # fine_tune: epochs training only the head
    head_epochs: int | None = None  # auto: head epochs on stored features (None: 4, segmentation 0)
    precompute: bool = True  # auto: train the head on precomputed features first
    solve_head: bool = True  # auto, body frozen: solve the head on the features (L-BFGS)
    head_scale: float = 1.5  # auto, body frozen: the head sees images at this times --size (1: off)
    unfreeze: str = "auto"  # auto: train the body "auto" (data unlike ImageNet), "yes" or "no"
    lr_find: bool = True  # auto: choose the head's learning rate with lr_find
    schedule: str = "one_cycle"  # auto: "one_cycle" or "sgdr" for the unfrozen phase
    sizes: list | None = None  # auto: progressive resizing of the unfrozen phase (sides or [h, w])
    resume: str | None = None  # a checkpoint written by a run: continue it exactly
    checkpoint_every: int | None = None  # also checkpoint every N batches (None: per epoch)
    ema: float | None = None  # keep, validate and save an EMA of the weights with this decay
    tta: int = 0  # also evaluate the final model with N test-time-augmented passes (0: off)
    bs: int = 32
    size: int | tuple[int, int] = 224  # a side, or (height, width): --size 1400x2100
    # Segmentation (a folder with images/ and masks/): training crops, decoder, loss.
    crop: int | tuple[int, int] | None = None  # train on random crops of this size
    decoder: str = "unet"  # "unet", "fpn" or "deeplabv3plus"
    loss: str = "ce"  # "ce" (cross-entropy ignoring void) or "dice_ce"
    lr: float = 2e-3  # fine_tune: base learning rate
    weights: str | None = None
    pretrained: bool = True
    out: str = "runs/latest"
    valid_pct: float | None = None  # random validation split (folders: when no DATA/val)
    valid_folder: str | None = None  # class folders: validate on DATA/<this> (None: val, valid)
    label_re: str | None = None  # no class folders: the class is this pattern's first group
    # segmentation: the images' and masks' folders under data, for a layout not found
    # from the files alone (None: found; images None: images/)
    images: str | None = None
    masks: str | None = None
    # Training from a CSV of (file, labels) rows instead of class folders, as
    # ImageDataLoaders.from_csv reads it: paths in the CSV are relative to data (or folder).
    csv: str | None = None  # the CSV file, relative to data (or absolute)
    folder: str | None = None  # the images' folder, relative to data (None: data)
    fn_col: int | str = 0  # column of file names: index, or header name
    label_col: int | str = 1  # column of labels
    label_delim: str | None = None  # labels separated by this in a cell: multi-label
    valid_col: int | str | None = None  # column of booleans marking validation rows
    flip: bool = True  # random horizontal flips (off for data that flipping changes, e.g. digits)
    seed: int = 42
    num_workers: int | None = None
    precision: str = "auto"
    memory_budget: str | None = None  # e.g. "8GB": plan and enforce (CUDA)
    micro_bs: int | None = None
    accumulate: int | None = None
    checkpointing: bool = False
    sync_bn: bool = False  # under torchrun: SyncBatchNorm (CUDA; turns OOM recovery off)
    opt: str = "adamw"
    wd: float = 0.01
    # Regularisation of classification (0: off), fastai's names in brackets.
    label_smoothing: float = 0.0  # eps (LabelSmoothingCrossEntropy); single-label only
    mixup: float = 0.0  # alpha of MixUp's Beta(alpha, alpha)
    cutmix: float = 0.0  # alpha of CutMix's Beta(alpha, alpha); not with mixup
    device: str | None = None
    tensorboard: bool = False  # also log each epoch's scalars to OUT/tensorboard

    def to_json(self, path) -> Path:
        """Write the configuration as JSON to ``path``, atomically."""
        path = Path(path)
        text = json.dumps(asdict(self), indent=2)
        atomic_write(path, lambda tmp: tmp.write_text(text))
        return path

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]
