"""What the subcommands' options share: argparse types that say the accepted form,
the CSV-dataset and memory options, and a parser whose errors are one line."""

from __future__ import annotations

import argparse
import difflib
import re
import sys

from snugfit.errors import SnugfitError
from snugfit.sizes import parse_size


def number(cast, ok, accepted: str):
    """An argparse type that says the accepted form on bad input (argparse names the
    argument: "argument --bs: must be a positive integer, got '0'")."""

    def parse(text):
        try:
            value = cast(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"must be {accepted}, got {text!r}")
        return value

    return parse


positive_int = number(int, lambda v: v >= 1, "a positive integer")
non_negative_int = number(int, lambda v: v >= 0, "an integer ≥ 0")
positive_float = number(float, lambda v: 0 < v < float("inf"), "a positive number")
non_negative_float = number(float, lambda v: 0 <= v < float("inf"), "a number ≥ 0")
fraction = number(float, lambda v: 0 < v < 1, "between 0 and 1")
below_one = number(float, lambda v: 0 <= v < 1, "a number ≥ 0 and < 1")


def image_size(text: str):
    """``--size 224`` or ``--size 1400x2100`` (height x width)."""
    try:
        return parse_size(text)
    except SnugfitError:
        raise argparse.ArgumentTypeError(
            f"must be a positive integer, got {text!r} (or HEIGHTxWIDTH, e.g. 1400x2100)"
        ) from None


def column(text: str) -> int | str:
    """A CSV column: its index (0, 1, ...) or its name in the header row."""
    return int(text) if text.isdigit() else text


def delimiter(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("must be a non-empty string, e.g. ' ' or ';'")
    return text


def budget(text: str) -> str:
    """A memory budget, checked here (the run reads it again against the device)."""
    from snugfit.memory import parse_bytes

    try:
        parse_bytes(text, total=1, name="")
    except SnugfitError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix(": ")) from None
    return text


DATA_HELP = (
    "folder: DATA/train/<class>/*, DATA/val/<class>/* (or DATA/<class>/*); "
    "segmentation: DATA/images/* and DATA/masks/* (.png, .tif; .jpg read as binary; "
    "codes.txt, valid.txt optional), or PASCAL VOC's DATA/JPEGImages and "
    "DATA/SegmentationClass (labelmap.txt, ImageSets/Segmentation/val.txt optional), or "
    "a folder named for masks beside the images' (Carvana's train/ and "
    "train_masks/<id>_mask.gif), or one folder of both (DeepGlobe's <id>_sat.jpg and "
    "<id>_mask.png); "
    "with --csv, the folder the CSV's file names are relative to"
)


def add_csv_args(p: argparse.ArgumentParser) -> None:
    """The options of a dataset listed in a CSV file (those of ImageDataLoaders.from_csv)."""
    g = p.add_argument_group(
        "data from a CSV file",
        "one row per image: a file name (relative to DATA, or to --folder) and its label(s)",
    )
    g.add_argument(
        "--csv",
        default=None,
        metavar="FILE",
        help="read the images and labels from this CSV file (relative to DATA, or absolute; "
        "the first row names the columns) instead of class folders",
    )
    g.add_argument("--folder", default=None, help="the images' folder, relative to DATA")
    g.add_argument(
        "--fn-col",
        type=column,
        default=0,
        help="column of file names: header name or index (default 0)",
    )
    g.add_argument(
        "--label-col",
        type=column,
        default=1,
        help="column of labels: header name or index (default 1)",
    )
    g.add_argument(
        "--label-delim",
        type=delimiter,
        default=None,
        help="multi-label: the labels of a cell are separated by this (' ' splits on any "
        "whitespace); sigmoid outputs, BCE loss, accuracy_multi and f1_samples",
    )
    g.add_argument(
        "--valid-col",
        type=column,
        default=None,
        help="column of booleans (1/0, true/false, yes/no) marking validation rows "
        "(instead of a random --valid-pct split, 0.2 by default)",
    )


def add_segmentation_args(p: argparse.ArgumentParser) -> None:
    """``--images`` and ``--masks``: a segmentation folder's two folders, by name."""
    p.add_argument(
        "--masks",
        default=None,
        metavar="DIR",
        help="segmentation: the masks' folder under DATA, for a layout not found from the "
        "files (e.g. annotations/trimaps); a mask's name is its image's, or that plus a "
        "suffix found from the names (_mask)",
    )
    p.add_argument(
        "--images",
        default=None,
        metavar="DIR",
        help="with --masks: the images' folder under DATA (default: images)",
    )


def add_folder_args(p: argparse.ArgumentParser) -> None:
    """``--valid-folder`` (the class folders' validation folder, by name) and
    ``--label-re`` (classes from file names instead of folders)."""
    p.add_argument(
        "--label-re",
        default=None,
        metavar="REGEX",
        help="no class folders: the class is this pattern's first group in each file's "
        r"name, e.g. '^(.+)[._-]\d+\.[^.]+$' for cat.12.jpg (fastai's from_name_re); "
        "names it does not label are listed and skipped",
    )
    p.add_argument(
        "--valid-folder",
        default=None,
        metavar="NAME",
        help="class folders: validate on DATA/NAME (e.g. test), beside DATA/train "
        "(default: DATA/val or DATA/valid)",
    )


def add_memory_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    """``--precision`` and ``--memory-budget`` (alias ``--gpu-mem``)."""
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="auto: bf16 on recent GPUs and CPUs with bf16, fp16 on older GPUs",
    )
    p.add_argument(
        "--memory-budget",
        "--gpu-mem",
        dest="memory_budget",
        default=None,
        required=required,
        type=budget,
        help="device memory to fit in: 8GB, 8GiB, 7500MB, or 0.5 of the card",
    )


NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")


class Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (argparse prints the whole usage first),
    and an unknown option is named first, with the option it may mean: argparse's own
    order reports a required option as missing instead (``plan --budget 8GB``)."""

    has_commands = False

    def add_subparsers(self, **kwargs):
        self.has_commands = True  # its words are the subcommands' to judge
        return super().add_subparsers(**kwargs)

    def parse_known_args(self, args=None, namespace=None):
        words = list(sys.argv[1:] if args is None else args)
        if not self.has_commands:
            for word in self.unknown_options(words):
                self.error(f"unrecognized option {word}{self.suggestion(word)}")
        return super().parse_known_args(words, namespace)

    def unknown_options(self, words: list[str]) -> list[str]:
        """The option words (up to ``--``) that name none of this parser's options,
        whole or, for ``--long`` ones, as the unique start argparse accepts."""
        known = self._option_string_actions
        unknown = []
        for word in words:
            if word == "--":
                break
            if not word.startswith("-") or word == "-" or NEGATIVE_NUMBER.match(word):
                continue
            name = word.split("=", 1)[0]
            if name in known or (word[:2] in known and not word.startswith("--")):
                continue
            if word.startswith("--") and any(o.startswith(name) for o in known):
                continue
            unknown.append(name)
        return unknown

    def suggestion(self, name: str) -> str:
        """ " (did you mean --x?)" for the closest option, likeness judged without dashes."""
        options = {o.lstrip("-"): o for o in self._option_string_actions if o.startswith("--")}
        close = difflib.get_close_matches(name.lstrip("-"), list(options), n=1)
        return f" (did you mean {options[close[0]]}?)" if close else ""

    def error(self, message: str):
        self.exit(2, f"snugfit: error: {message} (see {self.prog} --help)\n")
