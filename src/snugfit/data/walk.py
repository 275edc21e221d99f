"""Walking a folder for its image files: links followed, each real folder read once.

Datasets are often linked into place (``train/ants -> /data/ants``), so links to
folders are followed. A link that leads back to a folder holding it (a loop: a
class folder linked into itself, or a link to a parent) would be followed until the
operating system gives up, some 40 levels down, every image counted once per
level. `walk_images` reads each real folder once: links are followed after the
folders reached without one, and a link to a folder that holds it, or to a folder
already read, is not followed; it is returned as a `SkippedLink`, named once.

Every source that lists a folder walks it here: class folders (`snugfit.data.items`),
``from_name_re`` and ``from_path_func`` folders, a segmentation folder's images and
masks, and the folders given to ``snugfit predict``.

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as tmp:
...     ants = Path(tmp, "ants")
...     ants.mkdir()
...     Path(ants, "1.jpg").touch()
...     Path(ants, "again").symlink_to(ants)  # a loop
...     found = walk_images(ants)
...     [p.name for p in found.files], [Path(s.path).name for s in found.skipped]
(['1.jpg'], ['again'])
"""

from __future__ import annotations

import logging
import os
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

logger = logging.getLogger("snugfit")

# What Pillow decodes (it opens a file by its content; the extension picks the files).
# AVIF needs Pillow 11.3 or later: an older one reports such a file as unreadable.
# HEIC/HEIF (phone photos) through pillow-heif (`snugfit.data.decode`).
IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
    ".avif", ".heic", ".heif", ".ppm", ".pgm", ".pbm", ".pnm",
})  # fmt: skip
# Files an operating system writes into picture folders: not images, not worth a warning.
SYSTEM_FILES = frozenset({"thumbs.db", "desktop.ini"})


def is_image(p: Path) -> bool:
    """Whether ``p``'s extension is an image format snugfit reads."""
    return p.suffix.lower() in IMAGE_EXTENSIONS


@dataclass(frozen=True)
class SkippedLink:
    """A folder that was not followed: a link (a loop, a folder already read) or a run
    folder inside the data (`run_folder`)."""

    path: str  # the link, as found under the folder walked
    target: str  # what the link says (``os.readlink``)
    reason: str  # what it is, in words, naming the target

    def __str__(self) -> str:
        return f"{self.path}: not followed, {self.reason}"


def _skipped(link: Path, why: str) -> SkippedLink:
    try:
        target = os.readlink(link)
    except OSError:  # not a link itself (a bind mount): name the real folder
        target = os.path.realpath(link)
    return SkippedLink(str(link), target, f"a link to {target}, {why}")


class ImageWalk(NamedTuple):
    """What `walk_images` found: image files (sorted), the folders it did not follow
    (links, run folders), and the other files, not read (their extension is no image
    format; sorted)."""

    files: list[Path]
    skipped: list[SkippedLink]
    others: list[Path]


def leads_back(link: Path) -> bool:
    """Whether the folder ``link`` leads to holds ``link`` itself (itself or a parent):
    following it would read the same folders again, without end."""
    target = os.path.realpath(link)
    here = os.path.realpath(link.parent)
    return here == target or here.startswith(target.rstrip(os.sep) + os.sep)


# What marks a folder as a training run's output (`snugfit.app.run_folder`: both are
# written when a run starts). An ``--out`` inside the data would otherwise be read as
# data: its plots as images of a class named after the folder.
RUN_MARKERS = ("config.json", "events.jsonl")


def is_run_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a training run's output (`RUN_MARKERS`)."""
    return all((folder / name).is_file() for name in RUN_MARKERS)


def run_folder(folder: Path) -> SkippedLink:
    """The `SkippedLink` of a run folder found inside the data (`is_run_folder`)."""
    why = "a snugfit run folder (config.json, events.jsonl): a run's plots and model, not data"
    return SkippedLink(str(folder), str(folder), why)


def loop_link(link: Path) -> SkippedLink:
    """The `SkippedLink` of a ``link`` that `leads_back`."""
    return _skipped(link, "a folder that holds it (a loop)")


def walk_images(path: str | os.PathLike) -> ImageWalk:
    """The image files under ``path`` (recursively, matched by extension) and the links
    to folders not followed (see the module docstring).

    ``path`` itself may be a link. Hidden files and folders (``.ipynb_checkpoints``,
    macOS's ``._x.jpg``) are not images of the dataset and are left out, as are
    ``Thumbs.db`` and ``desktop.ini`` and folders that cannot be listed. A link to a
    file is a file (a broken one is kept, so that it is reported as unreadable).
    Any other file is in ``others``, for the caller to report (`warn_not_images`).
    """
    top = Path(path)
    files: list[Path] = []
    others: list[Path] = []
    skipped: list[SkippedLink] = []
    read: dict[tuple[int, int], Path] = {}  # (device, inode) of each folder read -> as what
    plain, linked = deque([top]), deque()  # folders reached without a link come first
    while plain or linked:
        folder = plain.popleft() if plain else linked.popleft()
        try:
            st = os.stat(folder)
        except OSError:
            continue  # vanished, or a broken link
        key = (st.st_dev, st.st_ino)
        if folder is not top and leads_back(folder):
            skipped.append(loop_link(folder))
            continue
        if folder is not top and is_run_folder(folder):
            skipped.append(run_folder(folder))
            continue
        if key in read:
            skipped.append(_skipped(folder, f"a folder already read as {read[key]}"))
            continue
        read[key] = folder
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue  # not listable (permissions): as os.walk, silently
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                (linked if entry.is_symlink() else plain).append(Path(entry.path))
            elif is_image(Path(entry.name)):
                files.append(Path(entry.path))
            elif entry.name.lower() not in SYSTEM_FILES:
                others.append(Path(entry.path))
    return ImageWalk(sorted(files), skipped, sorted(others))


def warn_skipped(skipped: list[SkippedLink]) -> None:
    """Log one warning line per link not followed."""
    for link in skipped:
        logger.warning("%s", link)


def extension(path: Path) -> str:
    """``path``'s extension, lower-case (``"no extension"`` without one)."""
    return path.suffix.lower() or "no extension"


def by_extension(paths: list[Path], top: int | None = None) -> str:
    """``".cr2: 2, .txt: 1"``: the files counted by `extension`, most first (then by
    name), the ``top`` most only when given."""
    counts = sorted(Counter(map(extension, paths)).items(), key=lambda c: (-c[1], c[0]))
    return ", ".join(f"{ext}: {n}" for ext, n in counts[:top])


def not_images_line(others: list[Path]) -> str:
    """One line on files that were not read because their extension is no image
    format: how many of each extension, one of them named, and what is read.

    >>> not_images_line([Path("a/1.cr2"), Path("a/2.cr2"), Path("b/notes.txt")])
    '3 file(s) not read, their extension is no image format snugfit reads (.cr2: 2, .txt: 1; e.g. a/1.cr2); it reads .avif, .bmp, .gif, .heic, .heif, .jfif, .jpe, .jpeg, .jpg, .pbm, .pgm, .png, .pnm, .ppm, .tif, .tiff, .webp'
    """
    return (
        f"{len(others)} file(s) not read, their extension is no image format snugfit reads "
        f"({by_extension(others)}; e.g. {others[0]}); it reads "
        f"{', '.join(sorted(IMAGE_EXTENSIONS))}"
    )


def warn_not_images(others: list[Path]) -> None:
    """Log `not_images_line` once, when there are such files."""
    if others:
        logger.warning("%s", not_images_line(others))


def named_files(
    files: list[Path], lines: list[int]
) -> tuple[list[Path], list[tuple[Path, int, str]], tuple[tuple[str, int], ...]]:
    """``files`` (named by a CSV, at its ``lines``) with each name that is no file, and
    has no image extension, replaced by the one image file of that name plus an
    extension (any case); the files still missing, with their line and a note naming
    the files of their name when several have it; the extensions found, counted. Each
    folder is listed once (Kaggle's CSVs name 000c1434d8d7 for 000c1434d8d7.png)."""
    listings: dict[Path, dict[str, str]] = {}  # folder -> lower-case file name -> name

    def listing(folder: Path) -> dict[str, str]:
        if folder not in listings:
            try:
                with os.scandir(folder) as entries:
                    listings[folder] = {e.name.lower(): e.name for e in entries if e.is_file()}
            except OSError:
                listings[folder] = {}
        return listings[folder]

    out, missing, found = [], [], Counter()
    for f, n in zip(files, lines, strict=True):
        if f.is_file():
            out.append(f)
            continue
        note = ""
        if f.suffix.lower() not in IMAGE_EXTENSIONS:
            names = listing(f.parent)
            hits = sorted(
                {names[k] for ext in IMAGE_EXTENSIONS if (k := (f.name + ext).lower()) in names}
            )
            if len(hits) == 1:
                out.append(f.parent / hits[0])
                found[Path(hits[0]).suffix.lower()] += 1
                continue
            if hits:
                note = f"{' and '.join(hits)} exist: name one in the CSV"
        out.append(f)
        missing.append((f, n, note))
    return out, missing, tuple(found.most_common())
