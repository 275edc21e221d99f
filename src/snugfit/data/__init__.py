"""Data: finding items, decoding, the pixel cache, augmentation, the data check, datasets,
sampling and the device loaders: everything between image files and batches on the device,
for classification (`ImageDataLoaders`) and segmentation (`SegmentationDataLoaders`:
images with their masks, `snugfit.data.masks`, checked by `check_segmentation`).

May import ``snugfit.errors``, ``snugfit.distributed``, ``snugfit.memory.units`` and
``snugfit.tasks``; torch, timm.data, PIL, numpy and rich. Nothing else of snugfit.
"""

from snugfit.data.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Augmentation,
    batch_augment,
    batch_augment_masks,
    center_batch,
)
from snugfit.data.cache import PixelCache, cache_dir
from snugfit.data.check import check_csv, check_folder
from snugfit.data.check_report import CheckReport
from snugfit.data.check_seg import check_segmentation
from snugfit.data.check_seg_report import SegmentationCheckReport
from snugfit.data.datasets import ImageDataset, SkipList, collate, ignore_sigint, make_dataloader
from snugfit.data.decode import decode_train, decode_valid, open_image, prepare_for_predict
from snugfit.data.device_loader import DeviceLoader
from snugfit.data.items import (
    IMAGE_EXTENSIONS,
    SplitItems,
    get_image_files,
    split_random,
    split_stratified,
)
from snugfit.data.loaders import ImageDataLoaders
from snugfit.data.masks import decode_pair, open_mask
from snugfit.data.preprocessing import Preprocessing
from snugfit.data.progress import progress
from snugfit.data.seg_layouts import is_segmentation_folder
from snugfit.data.segmentation import SegmentationDataLoaders
from snugfit.data.settings import LoaderSettings, resolve_device

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "Augmentation",
    "CheckReport",
    "DeviceLoader",
    "ImageDataLoaders",
    "ImageDataset",
    "LoaderSettings",
    "PixelCache",
    "Preprocessing",
    "SegmentationCheckReport",
    "SegmentationDataLoaders",
    "SkipList",
    "SplitItems",
    "batch_augment",
    "batch_augment_masks",
    "cache_dir",
    "center_batch",
    "check_csv",
    "check_folder",
    "check_segmentation",
    "collate",
    "decode_pair",
    "decode_train",
    "decode_valid",
    "get_image_files",
    "ignore_sigint",
    "is_segmentation_folder",
    "make_dataloader",
    "open_image",
    "open_mask",
    "prepare_for_predict",
    "progress",
    "resolve_device",
    "split_random",
    "split_stratified",
]
