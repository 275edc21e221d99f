"""Class folders beside train/ that no split reads (Kaggle's train/ and test/) are said,
and ``--valid-folder`` validates on one of them. Before, a test/ of class folders was
ignored without a word while a random 20% of train/ validated."""

import logging
import shutil

import numpy as np
import pytest

from snugfit.data import ImageDataLoaders
from snugfit.data.check import check_folder
from test_cli import run_cli


@pytest.fixture
def kaggle(image_folder):
    """train/ and test/ (the fixture's val/ renamed), plus folders that are no data:
    hidden, a run folder, one without class folders."""
    (image_folder / "val").rename(image_folder / "test")
    shutil.copytree(image_folder / "test", image_folder / ".ipynb_checkpoints")
    run = image_folder / "runs" / "latest"
    run.mkdir(parents=True)
    for name in ("config.json", "events.jsonl"):
        (run / name).write_text("{}")
    shutil.copy(next((image_folder / "test" / "red").iterdir()), run / "batch.png")
    (image_folder / "notes").mkdir()
    (image_folder / "notes" / "readme.txt").write_text("not images")
    return image_folder


def test_a_test_folder_beside_train_is_named_not_silently_left(kaggle):
    report = check_folder(kaggle, workers=1)
    assert report.layout == "split" and report.unread == ["test"]
    assert report.describe() == (
        "validation split off at random, 0.2; not read: test/ (--valid-folder test validates on it)"
    )
    assert sum(report.images.values()) == 16  # train/'s images only


def test_valid_folder_validates_on_it(kaggle):
    report = check_folder(kaggle, valid="test", workers=1)
    assert report.layout == "folders" and report.unread == []
    assert report.images == {"train": 16, "valid": 8}
    assert report.describe() == "train and validation folders"


def test_from_folder_warns_about_the_folder_it_does_not_read(kaggle, caplog):
    with caplog.at_level(logging.WARNING, logger="snugfit"):
        dls = ImageDataLoaders.from_folder(kaggle, bs=4, size=32, num_workers=0, seed=0)
    [line] = [r.getMessage() for r in caplog.records if "not read" in r.getMessage()]
    assert line == (
        f"{kaggle / 'test'}: class folders beside train/ that are not read "
        "(valid='test' validates on them)"
    )
    assert len(dls.valid_items) == 4  # 20% of train/


def test_valid_folder_on_the_command_line(kaggle, capsys):
    code, out, _ = run_cli(capsys, "check", str(kaggle), "--valid-folder", "test")
    assert code == 0 and "check: " in out and "(train and validation folders)" in out
    for extra, error in [
        (["--valid-pct", "0.3"], "--valid-folder and --valid-pct: give one"),
        (["--csv", "labels.csv"], "--valid-folder: not for a CSV or a segmentation folder"),
    ]:
        code, _, err = run_cli(capsys, "check", str(kaggle), "--valid-folder", "test", *extra)
        assert code == 2 and err.startswith(f"snugfit: error: {error}")


def test_split_folders_are_not_taken_for_classes(tmp_path, capsys):
    """Intel's scene data: seg_train/seg_train/<class>, seg_test/seg_test/<class>,
    seg_pred/seg_pred/*.jpg. Read from the top, its "classes" were the three splits."""
    from fixtures import make_image_folder

    root = tmp_path / "intel"
    for split in ("seg_train", "seg_test"):
        make_image_folder(root / split / split, classes=("red", "green"), valid_name=None)
    make_image_folder(root / "seg_pred" / "seg_pred", classes=("x",), valid_name=None)
    code, _, err = run_cli(capsys, "check", str(root))
    assert code == 2 and err.strip() == (
        f"snugfit: error: {root}: its folders seg_pred, seg_test, seg_train look like splits, "
        f"not classes; point DATA at {root / 'seg_train' / 'seg_train'} (its folders look like "
        "classes)"
    )
    # a class named like a split among real classes is a class
    make_image_folder(tmp_path / "lab", classes=("test_tube", "beaker"), valid_name=None)
    assert check_folder(tmp_path / "lab", workers=1).classes == ["beaker", "test_tube"]


def test_one_class_points_at_the_dataset_inside(image_folder, tmp_path, capsys):
    """Kaggle's chest X-ray zip: chest_xray/chest_xray/{train,val,test} and __MACOSX."""
    outer = tmp_path / "chest_xray"
    (outer / "__MACOSX").mkdir(parents=True)
    image_folder.rename(outer / "chest_xray")
    code, _, err = run_cli(capsys, "check", str(tmp_path))
    assert code == 2 and err.strip() == (
        f"snugfit: error: {tmp_path}: found only one class ('chest_xray'); need at least two; "
        f"point DATA at {outer / 'chest_xray'} (it holds train/)"
    )


def test_images_and_annotations_are_not_taken_for_classes(tmp_path, capsys):
    """The Oxford pets as downloaded: images/<Breed>_<n>.jpg and annotations/trimaps/.
    Read from the top, its "classes" were images and annotations."""
    from fixtures import colour_image

    root = tmp_path / "pets"
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "annotations" / "trimaps").mkdir(parents=True)
    for i in range(3):
        for breed in ("Abyssinian", "great_pyrenees"):
            colour_image(i % 2, rng).save(root / "images" / f"{breed}_{i}.jpg")
            colour_image(0, rng).save(root / "annotations" / "trimaps" / f"{breed}_{i}.png")
    code, _, err = run_cli(capsys, "check", str(root))
    assert code == 2 and err.strip() == (
        f"snugfit: error: {root}: its folders annotations, images look like a dataset's images "
        f"and annotations, not classes; their names hold the class: DATA {root / 'images'} "
        r"with --label-re '^(.+)[._-]\d+\.[^.]+$'; or, to segment, --masks annotations/trimaps"
    )


def test_a_class_named_train_is_told_to_be_renamed(tmp_path, capsys):
    from fixtures import make_image_folder

    root = make_image_folder(tmp_path / "transport", classes=("train", "bus"), valid_name=None)
    code, _, err = run_cli(capsys, "check", str(root))
    assert code == 2 and err.strip() == (
        f"snugfit: error: {root / 'train'}: images must be in one subfolder per class "
        f"({root / 'train'}/<class>/*.jpg); if train/ is a class beside the others, rename "
        "it: a folder named train/ is read as the training split"
    )


def test_a_folder_of_unlabelled_images_beside_train_is_named(kaggle, caplog):
    """Kaggle's test/ without class folders (Dogs vs. Cats' test1/): said, not read."""
    flat = kaggle / "test1"
    flat.mkdir()
    for i, image in enumerate(sorted((kaggle / "test" / "red").iterdir())[:3]):
        shutil.copy(image, flat / f"{i}.png")
    (flat / "sample_submission.csv").write_text("id,label\n")
    report = check_folder(kaggle, workers=1)
    assert report.unlabelled_folders == {"test1": 3} and report.unread == ["test"]
    assert report.describe().endswith(
        "; not read, without class folders: test1/ with 3 images (snugfit predict labels them)"
    )
    assert sum(report.images.values()) == 16
    with caplog.at_level(logging.INFO, logger="snugfit"):
        ImageDataLoaders.from_folder(kaggle, bs=4, size=32, num_workers=0, seed=0)
    assert (
        f"{flat}: 3 images without class folders, not read (unlabelled; snugfit predict "
        "labels them)"
    ) in [r.getMessage() for r in caplog.records]
    assert check_folder(kaggle / "train", workers=1).unlabelled_folders == {}  # nothing beside
