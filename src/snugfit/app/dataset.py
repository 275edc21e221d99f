"""A run's dataset: the data check of a `TrainConfig`, and the loaders built from its report.

The check splits the items and decodes every file once; `loaders` builds the
training loaders from what it found (`ImageDataLoaders.from_check`, or
`SegmentationDataLoaders.from_check` for a segmentation folder: ``images/`` and
``masks/``): the same split, and no second pass over the file headers.
"""

from __future__ import annotations

from rich.console import Console

from snugfit.app.config import TrainConfig
from snugfit.data.check import check_csv, check_folder
from snugfit.data.check_names import check_names
from snugfit.data.check_report import CheckReport
from snugfit.data.check_seg import check_segmentation
from snugfit.data.check_seg_report import SegmentationCheckReport
from snugfit.data.loaders import ImageDataLoaders
from snugfit.data.seg_layouts import is_segmentation_folder
from snugfit.data.segmentation import SegmentationDataLoaders
from snugfit.errors import SnugfitError


def check_data(
    cfg: TrainConfig, console: Console | None = None
) -> CheckReport | SegmentationCheckReport:
    """The data check of a run's dataset (``cfg.data``): a segmentation folder (``images/``
    and ``masks/``), class folders, or ``cfg.csv``.

    Raises:
        SnugfitError: As `check_segmentation`, `check_folder` or `check_csv`; CSV
            options without ``cfg.csv``, or both ``valid_col`` and ``valid_pct``.
    """
    _check_data_options(cfg)
    if is_segmentation_data(cfg):
        return check_segmentation(
            cfg.data, valid_pct=cfg.valid_pct, seed=cfg.seed, images=cfg.images,
            masks=cfg.masks, console=console,
        )  # fmt: skip
    if cfg.label_re is not None:
        return check_names(
            cfg.data, cfg.label_re, valid_pct=cfg.valid_pct, seed=cfg.seed, size=cfg.size,
            console=console,
        )  # fmt: skip
    if cfg.csv is None:
        return check_folder(
            cfg.data, valid_pct=cfg.valid_pct, seed=cfg.seed, valid=cfg.valid_folder,
            size=cfg.size, console=console,
        )  # fmt: skip
    return check_csv(cfg.data, **csv_args(cfg), size=cfg.size, console=console)


# The command-line options that say what the data is and how it is split (train's,
# check's, lr-find's): `data_config` reads them into a TrainConfig.
DATA_OPTIONS = ("valid_pct", "valid_folder", "label_re", "images", "masks", "seed", "size",
                "csv", "folder", "fn_col", "label_col", "label_delim", "valid_col")  # fmt: skip


def data_config(args, *more: str) -> TrainConfig:
    """A TrainConfig of ``args.data`` with the parsed `DATA_OPTIONS` and the options
    ``more``; the rest at their defaults."""
    return TrainConfig(args.data, **{k: getattr(args, k) for k in (*DATA_OPTIONS, *more)})


def is_segmentation_data(cfg: TrainConfig) -> bool:
    """Whether the run's data is a segmentation folder (known from the layout alone,
    before the check reads a file)."""
    return cfg.csv is None and (cfg.masks is not None or is_segmentation_folder(cfg.data))


def _check_data_options(cfg: TrainConfig) -> None:
    """CSV options without a CSV, two ways of choosing the validation set or the
    classes, and folder options for data without class folders are errors."""
    for name, value in (("--valid-folder", cfg.valid_folder), ("--label-re", cfg.label_re)):
        if value is not None and (cfg.csv is not None or is_segmentation_data(cfg)):
            raise SnugfitError(f"{name}: not for a CSV or a segmentation folder")
    for name, value in (("--masks", cfg.masks), ("--images", cfg.images)):
        if value is not None and cfg.csv is not None:
            raise SnugfitError(f"{name}: not for a CSV (a segmentation folder's folders)")
    if cfg.images is not None and cfg.masks is None:
        raise SnugfitError("--images: give the masks' folder too (--masks)")
    if cfg.valid_folder is not None and cfg.valid_pct is not None:
        raise SnugfitError("--valid-folder and --valid-pct: give one (a folder, or a random split)")
    if cfg.valid_folder is not None and cfg.label_re is not None:
        raise SnugfitError(
            "--valid-folder and --label-re: --label-re splits at random (--valid-pct)"
        )
    defaults = TrainConfig("")
    if cfg.csv is None:
        given = [
            "--" + name.replace("_", "-")
            for name in ("folder", "fn_col", "label_col", "label_delim", "valid_col")
            if getattr(cfg, name) != getattr(defaults, name)
        ]
        if given:
            raise SnugfitError(f"{', '.join(given)}: only with --csv (the data is class folders)")
    elif cfg.valid_col is not None and cfg.valid_pct is not None:
        raise SnugfitError("--valid-col and --valid-pct: give one (a column, or a random split)")


def csv_args(cfg: TrainConfig) -> dict:
    """``ImageDataLoaders.from_csv``'s (and `check_csv`'s) arguments from a run's ``cfg``."""
    return {
        "csv_fname": cfg.csv,
        "folder": cfg.folder,
        "fn_col": cfg.fn_col,
        "label_col": cfg.label_col,
        "valid_col": cfg.valid_col,
        "valid_pct": 0.2 if cfg.valid_pct is None else cfg.valid_pct,
        "seed": cfg.seed,
        "label_delim": cfg.label_delim,
    }


def loaders(
    cfg: TrainConfig, report: CheckReport | SegmentationCheckReport
) -> ImageDataLoaders | SegmentationDataLoaders:
    """The loaders of ``cfg``'s data, from its check's ``report``: the check's split, and
    the files it found unreadable or missing skipped unopened (segmentation: training
    on crops of ``cfg.crop`` when the configuration has one, else whole images)."""
    settings = {
        "bs": cfg.bs,
        "size": cfg.size,
        "num_workers": cfg.num_workers,
        "device": cfg.device,
        "flip": cfg.flip,
        "seed": cfg.seed,
    }
    if isinstance(report, SegmentationCheckReport):
        return SegmentationDataLoaders.from_check(report, crop=cfg.crop, loss=cfg.loss, **settings)
    return ImageDataLoaders.from_check(report, **settings)
