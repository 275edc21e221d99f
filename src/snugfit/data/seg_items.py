"""Finding a segmentation dataset's items: image/mask pairs, the classes and the split.

The folder layout `snugfit.data.segmentation.SegmentationDataLoaders.from_folder` and
`snugfit.data.check_seg.check_segmentation` read::

    DATA/images/<name>.<ext>   any image format snugfit reads (subfolders allowed)
    DATA/masks/<name>.png      the same relative name, a lossless format (PNG, TIFF, BMP,
                               GIF); 8-bit class indices, 255 void (only 0 and 255 in
                               them: binary, 255 is class 1); or a JPEG, read as binary
    DATA/codes.txt             optional: line i is the name of class i
    DATA/class_dict.csv        or, for colour masks: name,r,g,b; row i is class i, the
                               masks paint it in that colour (Kaggle's DeepGlobe, CamVid)
    DATA/valid.txt             optional: the validation images, one name a line

or PASCAL VOC's, which CVAT and datumaro export (`VOC`)::

    DATA/JPEGImages/<name>.jpg          the images (those without a mask are reported)
    DATA/SegmentationClass/<name>.png   palette masks, the index the class, 255 void;
                                        or colour masks painted in labelmap.txt's colours
    DATA/labelmap.txt                   optional: ``name:r,g,b:parts:actions``, line i is
                                        class i (CVAT's export; ``#`` lines are comments)
    DATA/ImageSets/Segmentation/val.txt optional: the validation images, one name a line

(or ``SegmentationClassAug/``, VOC with SBD's masks added, when there is no
``SegmentationClass/``), or one `snugfit.data.seg_layouts.detected` from its files
(Carvana's ``train/`` and ``train_masks/<id>_mask.gif``, ISIC's, CamVid's). Any of
codes.txt, class_dict.csv and labelmap.txt may name the classes in any layout (one
of them).

An item is ``(image file, mask file)``. Only text files are opened here: images
without a mask, masks without an image and names listed twice are returned for the
caller to report; reading the pixels is `snugfit.data.masks`.
"""

from __future__ import annotations

import csv
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from snugfit.data import rle
from snugfit.data.items import folders_beside
from snugfit.data.seg_layouts import (
    CLASS_DICT,
    IMAGES,
    LABELMAP,
    MASKS,
    PLAIN,
    VOC,
    Folders,
    folders_of,
    given,
    says_masks,
)
from snugfit.data.seg_splits import (
    TEST_NAMES,
    Pair,
    relative_name,
    split_by_folders,
    split_by_list,
    split_folder,
    split_pairs,
    text_lines,
    unknown_valid_reason,
)
from snugfit.data.walk import SkippedLink, walk_images, warn_not_images, warn_skipped
from snugfit.errors import SnugfitError, first_line
from snugfit.tasks import VOID

logger = logging.getLogger("snugfit")

# How the reason of an image left out for its mask begins: it has none, or another
# image has its name (a mask is per name). `lacks_mask` reads them back.
NO_MASK = "no mask"
SAME_NAME = "another image has the name"


def lacks_mask(reason: str) -> bool:
    """Whether a skip ``reason`` is an image's missing mask (not a file's fault)."""
    return reason.startswith((NO_MASK, SAME_NAME))


CODES = "codes.txt"
# The formats a mask may have, in the order one is preferred when a name has several
# (satellite and medical sets ship .tif masks). Lossless ones hold class indices;
# JPEG's compression blends values at every edge, so a JPEG mask is read as a binary
# mask, thresholded (`snugfit.data.masks.open_mask`), as Kvasir-SEG's are meant.
LOSSLESS_SUFFIXES = (".png", ".tif", ".tiff", ".bmp", ".gif")
JPEG_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif")
MASK_SUFFIXES = LOSSLESS_SUFFIXES + JPEG_SUFFIXES
NOT_A_MASK = "is not a mask format (PNG, TIFF, BMP or GIF; JPEG for binary masks)"


class SegmentationItems(NamedTuple):
    """What `folder_pairs` (or `label_func_pairs`) found."""

    train: list[Pair]
    valid: list[Pair]
    vocab: list[str] | None  # codes.txt's names; None: numbered from the masks' values
    seed: int
    layout: str  # "valid.txt" (the validation images listed) or "split" (random)
    valid_pct: float | None  # the random split's fraction
    no_mask: list[tuple[Path, str]]  # images without a mask, with the reason
    no_image: list[Path]  # masks without an image (or of no mask format), never used
    codes: Path | None  # the codes file read
    links: list[SkippedLink]  # links to folders not followed (loops, folders already read)
    others: list[Path]  # files in images/ and masks/ that are no images (by extension)
    colours: list[tuple[int, int, int]] | None = None  # class_dict.csv's: colour masks
    folders: Folders = PLAIN
    # The validation list's lines naming no image (with a mask or without): (line, name)
    unknown_valid: tuple[tuple[int, str], ...] = ()
    # folders of images without masks, not read: beside the images' and masks'
    # (Carvana's test/), or a test folder among split folders: (folder, images in it)
    unlabelled: tuple[tuple[Path, int], ...] = ()
    # test folders among split folders (images/test/) whose pairs are held out, not
    # trained or validated: (folder, pairs in it)
    held_out: tuple[tuple[Path, int], ...] = ()
    # the rows of a run-length CSV not used: (line, image name, why)
    bad_rows: tuple[tuple[int, str, str], ...] = ()


def read_codes(path: Path) -> list[str]:
    """Class names from a codes file: line i names class i (trailing blank lines ignored).

    Raises:
        SnugfitError: Unreadable, empty, a blank or repeated name, more than 255 classes.
    """
    lines = text_lines(path, "class names")
    names = [line.strip() for line in lines]
    while names and not names[-1]:
        names.pop()
    return check_codes(names, str(path))


def read_class_dict(path: Path) -> tuple[list[str], list[tuple[int, int, int]]]:
    """Class names and colours from a class_dict.csv: a header naming ``name``, ``r``,
    ``g`` and ``b`` columns (any order, any case, other columns ignored); row i is
    class i, which the masks paint in its colour.

    Raises:
        SnugfitError: Unreadable, no such columns, a value that is no 0-255 integer,
            a colour or name repeated, no class, more than 255.
    """
    lines = text_lines(path, "classes")
    rows = [(n, row) for n, row in enumerate(csv.reader(lines), 1) if any(c.strip() for c in row)]
    header = [c.strip().lower() for c in rows[0][1]] if rows else []
    if not {"name", "r", "g", "b"} <= set(header):
        raise SnugfitError(f"{path}: needs a header with name, r, g and b columns")
    at = [header.index(k) for k in ("name", "r", "g", "b")]
    cells = [(n, [row[i].strip() if i < len(row) else "" for i in at]) for n, row in rows[1:]]
    return colour_table(path, cells)


def read_labelmap(path: Path) -> tuple[list[str], list[tuple[int, int, int]]]:
    """Class names and colours from a VOC labelmap.txt (CVAT's and datumaro's export):
    ``name:r,g,b:parts:actions`` a line, line i (blank and ``#`` lines skipped) class i.

    Raises:
        SnugfitError: As `read_class_dict`, and a line without ``name:r,g,b``.
    """
    lines = text_lines(path, "classes")
    cells = []
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, rest = line.partition(":")
        rgb = rest.partition(":")[0].split(",")
        if len(rgb) != 3:
            raise SnugfitError(f"{path}, line {n}: expected name:r,g,b:parts:actions, got {line!r}")
        cells.append((n, [name.strip(), *(c.strip() for c in rgb)]))
    return colour_table(path, cells)


def colour_table(
    path: Path, rows: list[tuple[int, list[str]]]
) -> tuple[list[str], list[tuple[int, int, int]]]:
    """``(line number, [name, r, g, b])`` rows as class names and colours, checked."""
    names, colours = [], []
    for n, cells in rows:
        rgb = tuple(int(c) if c.isdigit() and int(c) < 256 else -1 for c in cells[1:])
        if min(rgb) < 0:
            raise SnugfitError(f"{path}, line {n}: r, g, b must be integers 0-255, got {cells[1:]}")
        if rgb in colours:
            raise SnugfitError(f"{path}, line {n}: colour {rgb} repeated")
        names.append(cells[0])
        colours.append(rgb)
    return check_codes(names, str(path)), colours


def check_codes(names: Sequence, where: str) -> list[str]:
    """``names`` as class names (strings), checked: none blank or repeated, 1 to 255."""
    names = [str(n).strip() for n in names]
    if not names:
        raise SnugfitError(f"{where}: no class names")
    for i, name in enumerate(names):
        if not name:
            raise SnugfitError(f"{where}, line {i + 1}: empty class name")
        if name in names[:i]:
            raise SnugfitError(f"{where}, line {i + 1}: class name {name!r} repeated")
    if len(names) > VOID:
        raise SnugfitError(f"{where}: {len(names)} classes; at most {VOID} ({VOID} is void)")
    return names


def numbered_codes(top: int) -> list[str]:
    """``class_0`` ... ``class_<top>``: names for classes numbered by mask values."""
    return [f"class_{i}" for i in range(top + 1)]


def _pairs(
    root: Path, folders: Folders, links: list[SkippedLink], others: list[Path]
) -> tuple[list[Pair], list[tuple[Path, str]], list[Path]]:
    """Images with their masks (sorted), images without one, masks without an image;
    the links to folders not followed are added to ``links``, the files that are no
    images to ``others``."""
    images_dir, masks_dir = root / folders.images, root / folders.masks
    images = walk_images(images_dir)
    masks = images if masks_dir == images_dir else walk_images(masks_dir)
    links += images.skipped + (masks.skipped if masks is not images else [])
    others += images.others + (masks.others if masks is not images else [])

    def stem(path: Path, folder: Path) -> str:  # the name under the folder, no suffix
        return relative_name(path.with_suffix(""), folder)

    image_files, mask_files = images.files, masks.files
    if masks is images:  # one folder of both: a mask's name ends with the mask suffix
        is_mask = [stem(f, masks_dir).endswith(folders.mask_suffix) for f in images.files]
        image_files = [f for f, m in zip(images.files, is_mask, strict=True) if not m]
        mask_files = [f for f, m in zip(images.files, is_mask, strict=True) if m]
    masks_of, other, extra = _masks_by_name(mask_files, masks_dir, folders.mask_suffix)
    by_name: dict[str, Path] = {}
    pairs, no_mask, seen = [], [], set()
    for image in image_files:
        name = stem(image, images_dir)
        if folders.image_suffix and name.endswith(folders.image_suffix):
            name = name[: -len(folders.image_suffix)]
        seen.add(name)
        if name in by_name:
            no_mask.append((image, f"{SAME_NAME} {name!r}: {by_name[name]}"))
        elif name in masks_of:
            by_name[name] = image
            pairs.append((image, masks_of[name]))
        else:
            why = f"; {other[name]} {NOT_A_MASK}" if name in other else ""
            wanted = f"{masks_dir / name}{folders.mask_suffix}.png not found"
            if folders.rle:  # decoded from a CSV: the image has no row, or a bad one
                wanted = f"no usable row in {folders.rle}"
            no_mask.append((image, f"{NO_MASK} ({wanted}{why})"))
    # A mask of an image's name that cannot be one is in that image's reason, not here.
    used = {m for _, m in pairs} | {other[name] for name in by_name.keys() | seen if name in other}
    no_image = sorted(m for m in [*masks_of.values(), *other.values(), *extra] if m not in used)
    return pairs, no_mask, no_image


def _masks_by_name(
    files: list[Path], folder: Path, suffix: str = ""
) -> tuple[dict[str, Path], dict[str, Path], list[Path]]:
    """The masks by name (their path under ``folder`` without the extension, and
    without the layout's ``suffix``: ``x_mask.gif`` is ``x``'s): those in a mask
    format (the first of `MASK_SUFFIXES` a name has), the others, and the masks a
    name has besides its first of each (reported as unused)."""
    rank = {suffix: i for i, suffix in enumerate(MASK_SUFFIXES)}
    masks: dict[str, Path] = {}
    other: dict[str, Path] = {}
    extra: list[Path] = []
    for m in sorted(files, key=lambda f: rank.get(f.suffix.lower(), len(rank))):
        name = relative_name(m.with_suffix(""), folder)
        if suffix and name.endswith(suffix):
            name = name[: -len(suffix)]
        found = masks if m.suffix.lower() in rank else other
        if name in found:
            extra.append(m)
        else:
            found[name] = m
    return masks, other, extra


def pairs_of(found: SegmentationItems) -> list[Pair]:
    """Every pair ``found`` split, training then validation."""
    return found.train + found.valid


def is_jpeg_mask(mask: Path) -> bool:
    """Whether ``mask`` is read as a thresholded binary mask (a JPEG, by its name)."""
    return mask.suffix.lower() in JPEG_SUFFIXES


def warn_listing(found: SegmentationItems, path: str | os.PathLike) -> None:
    """Log what the listing of the folder ``path`` leaves out: links not followed, files
    that are no images, masks without an image, the validation list's unknown names
    (images without a mask are the caller's: training skips them with the unreadable)."""
    warn_skipped(found.links)
    warn_not_images(found.others)
    if found.no_image:
        logger.warning(
            "%s: %d mask(s) without an image, not used (e.g. %s)",
            path,
            len(found.no_image),
            found.no_image[0],
        )
    for folder, n in found.unlabelled:
        logger.info(f"{folder}: {n} images without masks, not read (snugfit predict segments "
                    f"them)")  # fmt: skip
    for folder, n in found.held_out:
        logger.info(f"{folder}: {n} pairs of a test split, not read (neither trained nor "
                    f"validated)")  # fmt: skip
    if found.unknown_valid:
        n, name = found.unknown_valid[0]
        logger.warning(
            "%s: %d name(s) of no image, ignored (e.g. %s)",
            Path(path) / found.folders.valid,
            len(found.unknown_valid),
            unknown_valid_reason(n, name, found.folders),
        )


def folder_pairs(
    path: str | os.PathLike,
    valid_pct: float | None = None,
    seed: int = 42,
    images: str | None = None,
    masks: str | None = None,
) -> SegmentationItems:
    """The split pairs of a segmentation folder (the layout of the module docstring, or
    the folders ``images`` and ``masks`` under it: `snugfit.data.seg_layouts.given`).

    Validation: the images ``valid.txt`` lists; else split folders
    (`snugfit.data.seg_splits.split_by_folders`); with ``valid_pct`` given, or
    without either, a seeded random split (``valid_pct`` default 0.2).

    Raises:
        SnugfitError: Missing folder, no ``images/`` or ``masks/``, no image with a
            mask, a bad codes.txt, a valid.txt naming no image with a mask (the lines
            naming no image are returned, `SegmentationItems.unknown_valid`), an
            empty training or validation set.
    """
    root = Path(path)
    if not root.is_dir():
        raise SnugfitError(f"{root}: no such directory")
    if images is not None and masks is None:
        raise SnugfitError("images: give the masks' folder too (masks=, --masks)")
    folders = folders_of(root) if masks is None else given(root, images, masks)
    if folders is None:
        missing = next(root / sub for sub in (IMAGES, MASKS) if not (root / sub).is_dir())
        raise SnugfitError(
            f"{missing}: no such directory (a segmentation folder has {IMAGES}/ and {MASKS}/, "
            f"or PASCAL VOC's {VOC.images}/ and {VOC.masks}/)"
        )
    links: list[SkippedLink] = []
    others: list[Path] = []
    pairs, no_mask, no_image = _pairs(root, folders, links, others)
    if not pairs:
        found = f"{len(no_mask)} images, {len(no_image)} masks"
        hint = f"; e.g. {no_mask[0][0]}: {no_mask[0][1]}" if no_mask else ""
        raise SnugfitError(f"{root}: no image with a mask ({found}){hint}")
    codes, vocab, colours = _class_names(root)
    bad_rows = ()
    if folders.rle:  # decoded from a CSV: its classes (unless codes.txt names them), bad rows
        table = rle.decoded_into(Path(folders.masks))
        if codes is None:
            codes, vocab = root / folders.rle, table.vocab
        bad_rows = tuple(table.problems)
    images_dir, valid_file = root / folders.images, root / folders.valid
    unknown, held_out, unlabelled = [], [], list(_unlabelled_beside(root, folders))
    listed = valid_pct is None and valid_file.is_file()
    by_folder = None if listed or valid_pct is not None else split_by_folders(pairs, images_dir)
    if listed:
        maskless = [image for image, _ in no_mask]
        train, valid, unknown = split_by_list(pairs, maskless, images_dir, valid_file)
        layout = folders.valid
    elif by_folder is not None:
        train, valid, valid_folder, held_out = by_folder
        layout = (
            f"{valid_folder}/" if folders.images == "." else f"{folders.images}/{valid_folder}/"
        )
        no_mask, untested = _test_images(no_mask, images_dir)
        unlabelled += untested
    else:
        valid_pct = 0.2 if valid_pct is None else valid_pct
        train, valid = split_pairs(pairs, valid_pct, seed)
        layout = "split"
    _not_empty(root, train, valid)
    return SegmentationItems(
        train, valid, vocab, seed, layout, valid_pct, no_mask, no_image, codes, links, others,
        colours, folders, tuple(unknown), tuple(unlabelled), tuple(held_out), bad_rows,
    )  # fmt: skip


def _test_images(
    no_mask: list[tuple[Path, str]], images_dir: Path
) -> tuple[list[tuple[Path, str]], list[tuple[Path, int]]]:
    """The images without a mask less those of test folders (`TEST_NAMES`: expected
    without masks), and those folders with their count of them."""
    kept, counts = [], Counter()
    for image, reason in no_mask:
        folder = split_folder(image, images_dir)
        if folder.lower() in TEST_NAMES and reason.startswith(NO_MASK):
            counts[folder] += 1
        else:
            kept.append((image, reason))
    return kept, [(images_dir / name, n) for name, n in sorted(counts.items())]


def _unlabelled_beside(root: Path, folders: Folders) -> tuple[tuple[Path, int], ...]:
    """Folders of images beside ``folders`` that are not read (no masks), less those
    named for masks (VOC's SegmentationObject/)."""
    if folders.images == ".":  # the data folder holds the pairs: nothing is beside
        return ()
    used = {root / folders.images, root / folders.masks}
    _, unlabelled = folders_beside(root, used)
    return tuple((d, n) for d, n in unlabelled if not says_masks(d.name))


def _class_names(root: Path) -> tuple[Path | None, list[str] | None, list | None]:
    """The file naming the classes (codes.txt, class_dict.csv or labelmap.txt, at most
    one), its names and, for the two with colours, the colours; Nones without one."""
    found = [root / f for f in (CODES, CLASS_DICT, LABELMAP) if (root / f).is_file()]
    if len(found) > 1:
        named = " and ".join(f.name for f in found)
        raise SnugfitError(f"{root}: both {named} name the classes; keep one")
    if not found:
        return None, None, None
    if found[0].name == CODES:
        return found[0], read_codes(found[0]), None
    read = read_class_dict if found[0].name == CLASS_DICT else read_labelmap
    return found[0], *read(found[0])


def label_func_pairs(
    path: str | os.PathLike,
    fnames: Sequence[str | os.PathLike],
    label_func: Callable[[Path], str | os.PathLike],
    codes: Sequence[str] | None,
    valid_pct: float,
    seed: int,
) -> SegmentationItems:
    """The split pairs of images and ``label_func(image) -> mask file`` (fastai's
    ``from_label_func``); images whose mask does not exist are in ``no_mask``.

    Raises:
        SnugfitError: No files, a failing ``label_func``, bad ``codes``, no image with
            a mask, an empty training or validation set.
    """
    root = Path(path)
    files = [root / f for f in fnames]
    if not files:
        raise SnugfitError("fnames: the list of files is empty")
    pairs, no_mask = [], []
    for f in files:
        try:
            mask = Path(label_func(f))
        except Exception as e:
            raise SnugfitError(f"{f}: label_func failed ({first_line(e)})") from None
        if mask.is_file():
            pairs.append((f, mask))
        else:
            no_mask.append((f, f"{NO_MASK} ({mask} not found)"))
    if not pairs:
        raise SnugfitError(f"{root}: no image with a mask; e.g. {no_mask[0][0]}: {no_mask[0][1]}")
    vocab = check_codes(codes, "codes") if codes is not None else None
    train, valid = split_pairs(pairs, valid_pct, seed)
    _not_empty(root, train, valid)
    return SegmentationItems(
        train, valid, vocab, seed, "split", valid_pct, no_mask, [], None, [], []
    )


def _not_empty(root: Path, train: list[Pair], valid: list[Pair]) -> None:
    if not train:
        raise SnugfitError(f"{root}: the training set is empty (every image is for validation)")
    if not valid:
        raise SnugfitError(f"{root}: the validation set is empty (no image with a mask)")
