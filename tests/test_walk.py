"""Walking folders: links to folders followed, each real folder read once, loops named once."""

import os
from pathlib import Path

import pytest

from fixtures import loaders_and_warnings, make_image_folder, make_segmentation_folder
from snugfit.app.cli import main
from snugfit.data.check import check_folder
from snugfit.data.check_seg import check_segmentation
from snugfit.data.loaders import ImageDataLoaders
from snugfit.data.walk import walk_images
from snugfit.infer.predict import image_inputs


def _files(root: Path, names) -> list[Path]:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).touch()
    return sorted(root / name for name in names)


def test_a_walk_reads_each_real_folder_once_and_names_each_link_it_skips(tmp_path):
    top = tmp_path / "top"
    files = _files(top, ["a.jpg", "sub/b.png", "sub/deep/c.jpg"])
    _files(top, ["sub/notes.txt", ".hidden/d.jpg"])  # not images of the dataset
    (top / "loop").symlink_to(".")  # itself
    (top / "sub" / "up").symlink_to("..")  # a parent
    (top / "sub" / "deep" / "root").symlink_to(top.resolve())  # an absolute link, higher up
    (top / "alias").symlink_to("sub/deep")  # a folder read anyway: once only
    found = walk_images(top)
    assert found.files == files
    why = {Path(s.path).relative_to(top).as_posix(): s.reason for s in found.skipped}
    assert why == {
        "loop": "a link to ., a folder that holds it (a loop)",
        "sub/up": "a link to .., a folder that holds it (a loop)",
        "sub/deep/root": f"a link to {top.resolve()}, a folder that holds it (a loop)",
        "alias": f"a link to sub/deep, a folder already read as {top / 'sub' / 'deep'}",
    }


def test_links_to_folders_elsewhere_are_followed(tmp_path):
    """Datasets linked into place: class folders that are links, and a link inside one."""
    store = make_image_folder(tmp_path / "store", classes=("ants", "bees"), n_train=3, n_valid=2)
    extra = make_image_folder(tmp_path / "extra", classes=("ants",), n_train=2, n_valid=0, seed=1,
                              valid_name=None)  # fmt: skip
    data = tmp_path / "data"
    for split in ("train", "val"):
        (data / split).mkdir(parents=True)
        for cls, kind in (("ants", "kind_a"), ("bees", "kind_b")):
            (data / split / kind).symlink_to(store / split / cls, target_is_directory=True)
    (store / "train" / "ants" / "more").symlink_to(extra / "ants")  # read through the link
    report = check_folder(data)
    assert report.counts == {"train": {"kind_a": 3 + 2, "kind_b": 3},
                             "valid": {"kind_a": 2, "kind_b": 2}}  # fmt: skip
    assert report.links == [] and report.duplicates == []
    dls = ImageDataLoaders.from_folder(data, num_workers=0, cache=False)
    assert dls.vocab == ["kind_a", "kind_b"] and len(dls.train_items) == 8


@pytest.fixture
def looped(tmp_path):
    """An image folder whose class folders link back to themselves and to a parent."""
    root = make_image_folder(tmp_path / "d", n_train=4, n_valid=2)
    (root / "train" / "red" / "again").symlink_to(".")
    (root / "train" / "green" / "up").symlink_to("..")
    (root / "val" / "red" / "root").symlink_to(root.resolve())
    (root / "train" / "everything").symlink_to(".")  # a class folder that is a loop
    return root


LOOP_LINES = [
    "folders not followed: 4 (each real folder is read once; run folders are no data)",
    "  train/everything: a link to ., a folder that holds it (a loop)",
    "  train/green/up: a link to .., a folder that holds it (a loop)",
    "  train/red/again: a link to ., a folder that holds it (a loop)",
]


def test_the_check_counts_each_image_once_and_names_each_loop_once(looped, capsys):
    report = check_folder(looped, size=32)  # no image is tiny at 32
    assert report.counts == {"train": {"green": 4, "red": 4}, "valid": {"green": 2, "red": 2}}
    assert report.duplicates == [] and report.empty == [] and len(report.links) == 4
    lines = report.lines()
    assert lines[-5:-1] == LOOP_LINES
    assert (
        lines[-1]
        == f"  val/red/root: a link to {looped.resolve()}, a folder that holds it (a loop)"
    )
    assert report.to_dict()["links"][0] == {
        "path": str(looped / "train" / "everything"),
        "target": ".",
        "reason": "a link to ., a folder that holds it (a loop)",
    }
    assert main(["check", str(looped), "--size", "32"]) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 15  # what, the table (8 lines), the 5 above, the time
    for line in LOOP_LINES:
        assert out.count(line.strip()) == 1, line


def test_loaders_and_predict_log_each_loop_once(looped, caplog):
    dls, warned = loaders_and_warnings(looped, caplog)
    assert len(dls.train_items) == 8 and len(dls.valid_items) == 4
    assert len(warned) == 4
    assert f"{looped / 'train' / 'green' / 'up'}: not followed, a link to .., " in warned[1]
    caplog.clear()
    files = image_inputs([looped / "train"])
    assert files == sorted(str(p) for p, _ in dls.train_items)
    assert [r.getMessage() for r in caplog.records] == [
        f"{looped / 'train' / n}: not followed, a link to {t}, a folder that holds it (a loop)"
        for n, t in (("everything", "."), ("green/up", ".."), ("red/again", "."))
    ]


def test_a_segmentation_folder_reads_each_real_folder_once(tmp_path):
    root = make_segmentation_folder(tmp_path / "seg", n=8)
    (root / "images" / "again").symlink_to(".")
    (root / "masks" / "up").symlink_to(os.path.relpath(root, root / "masks"))
    report = check_segmentation(root, workers=1)
    assert report.files == 8 and report.masks == 8 and report.usable == 8
    links = [p for p in report.issues if p.kind == "link"]
    assert [(Path(p.path).name, p.reason) for p in links] == [
        ("again", "a link to ., a folder that holds it (a loop)"),
        ("up", "a link to .., a folder that holds it (a loop)"),
    ]
    assert (
        "folders not followed: 2 (each real folder is read once; run folders are no data)"
        in report.lines()
    )
