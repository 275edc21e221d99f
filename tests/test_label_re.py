"""Classes from file names on the command line (``--label-re``): Kaggle's Dogs vs. Cats
(``train/cat.12.jpg``) had no way in but Python's ``from_name_re``, and the class-folder
error did not say so."""

import json
from pathlib import Path

import numpy as np
import pytest

from fixtures import colour_image
from snugfit.data.check_names import check_names
from snugfit.data.name_labels import LABEL_RE_GUESS, compile_label_re, suggest_label_re
from snugfit.errors import SnugfitError
from test_cli import run_cli


@pytest.fixture
def named(tmp_path) -> Path:
    """``train/red.<i>.jpg`` and ``train/green_<i>.jpg`` (6 each), and one name without
    a class, ``train/notes.jpg``."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "data" / "train"
    folder.mkdir(parents=True)
    for i in range(6):
        colour_image(0, rng).save(folder / f"red.{i}.jpg")
        colour_image(1, rng).save(folder / f"green_{i}.jpg")
    colour_image(0, rng).save(folder / "notes.jpg")
    return tmp_path / "data"


def test_check_names_labels_splits_and_lists_the_names_it_cannot_label(named):
    report = check_names(named, LABEL_RE_GUESS, size=64, workers=1)  # no image is tiny
    assert report.classes == ["green", "red"] and sum(report.images.values()) == 12
    assert report.images == {"train": 10, "valid": 2}  # stratified: one of each validates
    [bad] = report.unlabelled
    assert Path(bad.path).name == "notes.jpg"
    assert bad.reason == f"file name not labelled by --label-re '{LABEL_RE_GUESS}'"
    assert report.describe() == (
        f"classes from file names by '{LABEL_RE_GUESS}'; validation split off at random, 0.2"
    )
    assert report.problems == 1


def test_the_class_folder_error_suggests_label_re_when_names_hold_classes(named, capsys):
    code, _, err = run_cli(capsys, "check", str(named))
    assert code == 2
    assert err.strip() == (
        f"snugfit: error: {named / 'train'}: images must be in one subfolder per class "
        f"({named / 'train'}/<class>/*.jpg); their names hold the class: --label-re "
        f"'{LABEL_RE_GUESS}' (from_name_re)"
    )
    files = sorted((named / "train").iterdir())
    assert suggest_label_re(files) == LABEL_RE_GUESS
    assert suggest_label_re([f.with_name(f"IMG_{i}.jpg") for i, f in enumerate(files)]) is None


def test_train_with_label_re(named, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, _ = run_cli(
        capsys, "train", str(named), "--label-re", LABEL_RE_GUESS, "--arch", "test_efficientnet",
        "--no-pretrained", "--bs", "4", "--size", "32", "--workers", "0", "--epochs", "1",
        "--head-epochs", "1", "--no-lr-find", "--out", str(out),
    )  # fmt: skip
    assert code == 0 and "classes from file names by" in stdout
    assert json.loads((out / "model" / "snugfit.json").read_text())["vocab"] == ["green", "red"]
    [bad] = json.loads((out / "check.json").read_text())["unlabelled"]
    assert Path(bad["path"]).name == "notes.jpg" and "no label: 1 file(s)" in stdout


@pytest.mark.parametrize(
    ("pat", "error"),
    [("(", "--label-re: '(' is no regular expression"), ("cat", "has no group to take")],
)
def test_bad_patterns_are_one_line(pat, error):
    with pytest.raises(SnugfitError) as e:
        compile_label_re(pat, "--label-re")
    assert error in str(e.value) and "\n" not in str(e.value)


def test_label_re_is_not_for_a_csv(named, capsys):
    code, _, err = run_cli(capsys, "check", str(named), "--label-re", "(x)", "--csv", "l.csv")
    assert code == 2 and "--label-re: not for a CSV or a segmentation folder" in err
