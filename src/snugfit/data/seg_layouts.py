"""Which folders of a segmentation dataset hold its images and its masks.

Named layouts first: ``images/`` and ``masks/`` (`PLAIN`), PASCAL VOC's
``JPEGImages/`` and ``SegmentationClass/`` (`VOC`, or ``SegmentationClassAug/``).
Otherwise, datasets as they are downloaded are recognised by their files
(`detected`): a folder whose name says masks (``train_masks``, ``labels``,
``..._GroundTruth``, ``annotations``) beside a folder of images whose names the
masks share, or share plus one suffix: Carvana's ``train/<id>.jpg`` and
``train_masks/<id>_mask.gif``, ISIC 2018's ``..._Input/ISIC_0000000.jpg`` and
``..._GroundTruth/ISIC_0000000_segmentation.png``, fastai's CamVid
``images/<name>.png`` and ``labels/<name>_P.png``; or one folder holding both, the
masks' names ending in such a word: DeepGlobe's ``train/<id>_sat.jpg`` and
``train/<id>_mask.png``, or folders of both (Kaggle's brain MRI: one per patient,
``TCGA_CS_4941_19960909/TCGA_CS_4941_19960909_1_mask.tif``: the data folder itself,
``.``, holds the pairs). Half the masks at least must
pair so, and a few pairs are opened: each mask the size of its image and in a mask's
mode (greyscale, palette, 16-bit; colour only with a ``class_dict.csv`` or
``labelmap.txt``), so that a classifier's class folders named ``with_mask`` and
``without_mask`` holding ``1.jpg``, ``2.jpg``... stay class folders. Last, a CSV of
run-length masks beside a folder of the images it names (Kaggle's Understanding
Clouds, Severstal, Airbus, Carvana: `snugfit.data.rle`), decoded into the cache.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

from PIL import Image

from snugfit.data import rle
from snugfit.data.walk import walk_images
from snugfit.errors import SnugfitError

IMAGES, MASKS, VALID = "images", "masks", "valid.txt"
CLASS_DICT, LABELMAP = "class_dict.csv", "labelmap.txt"


class Folders(NamedTuple):
    """Where a segmentation folder keeps its images, masks and validation list."""

    images: str
    masks: str
    valid: str  # the file naming the validation images
    title: str  # how the check names the layout
    mask_suffix: str = ""  # a mask's name is its image's plus this (``_mask``)
    image_suffix: str = ""  # and an image's, when both share a folder (``_sat``)
    rle: str = ""  # the CSV of run-length masks decoded into ``masks`` (`snugfit.data.rle`)


PLAIN = Folders(IMAGES, MASKS, VALID, "images/ and masks/")
VOC = Folders(
    "JPEGImages", "SegmentationClass", "ImageSets/Segmentation/val.txt",
    "PASCAL VOC's JPEGImages/ and SegmentationClass/",
)  # fmt: skip
VOC_AUG = Folders(  # VOC with the SBD masks added, as DeepLab trains on it
    "JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation/val.txt",
    "PASCAL VOC's JPEGImages/ and SegmentationClassAug/",
)  # fmt: skip
LAYOUTS = (PLAIN, VOC, VOC_AUG)

# Words in a folder's name (letters only, any case) that say it holds masks.
MASK_WORDS = ("mask", "label", "annot", "groundtruth", "segmentation", "trimap")
MASK_MODES = ("1", "L", "P", "I", "I;16", "LA", "PA")
SAMPLED = 4  # pairs opened to confirm a detected layout
PEEK = 200  # files looked at in a folder for a mask's name (`_names_a_mask`)


def folders_of(path: str | os.PathLike) -> Folders | None:
    """The layout ``path`` has: a named one whose two folders exist (`PLAIN` first),
    else one `detected` from its files, else a CSV of run-length masks (decoded into
    the cache the first time, with a progress bar on a terminal); None: none."""
    root = Path(path)
    found = _of_files(root)
    if found is not None:
        return found
    table = rle.find(root)
    if table is None:
        return None
    masks = rle.decoded(root, table)
    return Folders(table.images, str(rle.masks_of(masks)), VALID, rle.describe(table, masks),
                   rle=table.csv.name)  # fmt: skip


def _of_files(root: Path) -> Folders | None:
    named = next(
        (f for f in LAYOUTS if (root / f.images).is_dir() and (root / f.masks).is_dir()), None
    )
    return named if named is not None else detected(root)


def given(root: Path, images: str | None, masks: str) -> Folders:
    """The layout of the folders named (``--images``, ``--masks``: relative to ``root``;
    ``images`` None: ``images``), the masks' and images' name suffixes found from the
    names as `detected` finds them (for a layout it does not find: Oxford pets'
    ``annotations/trimaps``).

    Raises:
        SnugfitError: A folder that does not exist.
    """
    images = IMAGES if images is None else images
    for name, flag in ((images, "--images"), (masks, "--masks")):
        if not (root / name).is_dir():
            raise SnugfitError(f"{root / name}: no such directory ({flag})")
    image_names = list(_by_name(root / images))
    mask_names = image_names if masks == images else list(_by_name(root / masks))
    if images == masks:
        mask_end, image_end, _ = one_folder(image_names)
        title = f"{images}/ (given; images <name>{image_end}, masks <name>{mask_end})"
        return Folders(images, masks, VALID, title, mask_end, image_end)
    suffix, _ = mask_suffix(image_names, mask_names)
    named = f"; a mask named as its image plus {suffix!r}" if suffix else ""
    return Folders(images, masks, VALID, f"{images}/ and {masks}/ (given{named})", suffix)


def _by_name(folder: Path) -> dict[str, Path]:
    """The image files under ``folder`` by their paths under it, without the extension."""
    return {f.relative_to(folder).with_suffix("").as_posix(): f for f in walk_images(folder).files}


def is_segmentation_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` has a layout (`folders_of`; run-length masks not decoded yet)."""
    root = Path(path)
    return _of_files(root) is not None or rle.find(root) is not None


def says_masks(name: str) -> bool:
    """Whether a folder's name says it holds masks (`MASK_WORDS`, or a ``gt`` word).

    >>> [says_masks(n) for n in ("train_masks", "ISIC2018_Task1_Training_GroundTruth", "GT")]
    [True, True, True]
    >>> [says_masks(n) for n in ("train", "images", "ISIC2018_Task1-2_Training_Input")]
    [False, False, False]
    """
    letters = re.sub(r"[^a-z]", "", name.lower())
    words = re.split(r"[^a-z]+", name.lower())
    return any(w in letters for w in MASK_WORDS) or "gt" in words


def detected(root: Path) -> Folders | None:
    """The folders of images and masks ``root``'s files show (the module docstring),
    the pairing the most masks; None: no such pair."""
    if not root.is_dir():
        return None
    subs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    listed: dict[Path, dict[str, Path]] = {}

    def files_of(folder: Path) -> dict[str, Path]:  # each folder walked once
        if folder not in listed:
            listed[folder] = _by_name(folder)
        return listed[folder]

    colour = (root / CLASS_DICT).is_file() or (root / LABELMAP).is_file()
    best: tuple[int, Folders] | None = None
    for folders, pairs in _candidates(subs, files_of):
        masks = files_of(root / folders.masks)
        if folders.masks == folders.images:  # one folder: its masks are the names marked
            masks = {m: f for m, f in masks.items() if m.endswith(folders.mask_suffix)}
        if not pairs or 2 * len(pairs) < len(masks) or (best and len(pairs) <= best[0]):
            continue
        images = files_of(root / folders.images)
        if all(_looks_paired(images[i], masks[m], colour) for i, m in pairs[:SAMPLED]):
            best = (len(pairs), folders)
    return best[1] if best else None


def _candidates(subs: list[Path], files_of) -> Iterator[tuple[Folders, list[tuple[str, str]]]]:
    """Each layout ``subs`` could have, with the ``(image, mask)`` names it pairs: a
    folder named for masks beside one of images, then one folder holding both."""
    for masks in (d for d in subs if says_masks(d.name)):
        for images in (d for d in subs if d != masks and not says_masks(d.name)):
            suffix, pairs = mask_suffix(files_of(images).keys(), files_of(masks).keys())
            named = f" (a mask named as its image plus {suffix!r})" if suffix else ""
            title = f"{images.name}/ and {masks.name}/{named}"
            yield Folders(images.name, masks.name, VALID, title, suffix), pairs
    both = [d for d in subs if _names_a_mask(d)]
    if len(both) > 1:  # one folder of both per patient, scene...: the whole of root
        root = both[0].parent
        mask_end, image_end, pairs = one_folder(files_of(root).keys())
        title = f"its folders (images <name>{image_end}, masks <name>{mask_end})"
        yield Folders(".", ".", VALID, title, mask_end, image_end), pairs
    for folder in both:
        mask_end, image_end, pairs = one_folder(files_of(folder).keys())
        title = f"{folder.name}/ (images <name>{image_end}, masks <name>{mask_end})"
        yield Folders(folder.name, folder.name, VALID, title, mask_end, image_end), pairs


def one_folder(names: Iterable[str]) -> tuple[str, str, list[tuple[str, str]]]:
    """In one folder: the suffix of the masks' names (a last word that says masks,
    `says_masks`: ``_mask``), that of the images' (``_sat``, or ``""``), and the
    ``(image, mask)`` names they pair; ``("", "", [])`` when no name says masks.

    >>> one_folder(["1_sat", "1_mask", "2_sat", "2_mask", "3_sat"])
    ('_mask', '_sat', [('1_sat', '1_mask'), ('2_sat', '2_mask')])
    """
    names = list(names)
    marked: dict[str, dict[str, str]] = {}  # suffix -> base name -> mask name
    for name in names:
        if (i := _mask_word_at(name)) > 0:
            marked.setdefault(name[i:], {})[name[:i]] = name
    if not marked:
        return "", "", []
    end, bases = max(marked.items(), key=lambda kv: len(kv[1]))
    found: dict[str, list[tuple[str, str]]] = {}
    for name in (n for n in names if not n.endswith(end)):
        j = _last_word_at(name)
        if name in bases:
            found.setdefault("", []).append((name, bases[name]))
        elif j > 0 and name[:j] in bases:
            found.setdefault(name[j:], []).append((name, bases[name[:j]]))
    if not found:
        return end, "", []
    image_end = max(found, key=lambda k: len(found[k]))
    return end, image_end, found[image_end]


def _last_word_at(name: str) -> int:
    """Where ``name``'s last word begins: the index of the ``_`` or ``-`` before it
    (-1: none)."""
    return max(name.rfind("_"), name.rfind("-"))


def _mask_word_at(name: str) -> int:
    """`_last_word_at` when that word says masks (``x_mask``: 1), else -1."""
    i = _last_word_at(name)
    return i if i > 0 and says_masks(name[i + 1 :]) else -1


def mask_suffix(images: Iterable[str], masks: Iterable[str]) -> tuple[str, list[tuple[str, str]]]:
    """The suffix most ``masks`` names add to an image's name (``""``: the same
    name), and the ``(image, mask)`` names it pairs. A suffix starts at a ``_``,
    ``-`` or ``.``.

    >>> mask_suffix(["a", "b_1", "c"], ["a_mask", "b_1_mask", "x_mask"])
    ('_mask', [('a', 'a_mask'), ('b_1', 'b_1_mask')])
    """
    image_names = set(images)
    found: dict[str, list[tuple[str, str]]] = {}
    for m in masks:
        if m in image_names:
            found.setdefault("", []).append((m, m))
            continue
        for i in range(len(m) - 1, 0, -1):
            if m[i] in "_-." and m[:i] in image_names:
                found.setdefault(m[i:], []).append((m[:i], m))
                break
    if not found:
        return "", []
    suffix = Counter({s: len(p) for s, p in found.items()}).most_common(1)[0][0]
    return suffix, found[suffix]


def _names_a_mask(folder: Path, look: int = PEEK) -> bool:
    """Whether one of the first ``look`` files in ``folder`` is named as a mask (its
    last word says masks): a cheap look before walking a folder that may be one of a
    classifier's thousand class folders."""
    try:
        with os.scandir(folder) as entries:
            for _, entry in zip(range(look), entries, strict=False):
                if _mask_word_at(entry.name.rsplit(".", 1)[0]) > 0 and entry.is_file():
                    return True
    except OSError:
        pass
    return False


def _looks_paired(image: Path, mask: Path, colour: bool) -> bool:
    """Whether ``mask`` is the size of ``image`` and in a mask's mode (colour only when
    the folder has a colour table)."""
    try:
        with Image.open(image) as img, Image.open(mask) as m:
            modes = MASK_MODES + (("RGB", "RGBA") if colour else ())
            return img.size == m.size and m.mode in modes
    except (OSError, SyntaxError, ValueError):
        return False
