"""A new run never overwrites an earlier one: the earlier run's files move to a sibling
folder named after when it started, and a resumed run stays where it is."""

import json
import os
import time
from pathlib import Path

from safetensors.torch import load_file

from fixtures import make_image_folder
from snugfit.app.run_folder import RUN_FILES, RunFolder
from snugfit.data.walk import RUN_MARKERS, walk_images
from test_cli import TRAIN, run_cli

FAST = [*TRAIN, "--recipe", "fine_tune", "--epochs", "1", "--freeze-epochs", "0"]


def _run(root: Path, names=("config.json", "model/model.safetensors", "metrics.csv")) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(name)


def test_set_aside_moves_the_run_files_only_into_a_folder_named_when_it_started(tmp_path):
    root = tmp_path / "latest"
    _run(root)
    (root / "notes.md").write_text("mine")  # not the run's: stays
    started = time.mktime((2026, 11, 30, 9, 5, 7, 0, 0, -1))
    os.utime(root / "config.json", (started, started))
    folder = RunFolder(root)
    assert folder.holds_run()
    kept = folder.set_aside()
    assert kept == tmp_path / "latest-20261130-090507"
    assert sorted(p.relative_to(kept).as_posix() for p in kept.rglob("*") if p.is_file()) == [
        "config.json", "metrics.csv", "model/model.safetensors"
    ]  # fmt: skip
    assert (kept / "model" / "model.safetensors").read_text() == "model/model.safetensors"
    assert [p.name for p in root.iterdir()] == ["notes.md"] and not folder.holds_run()
    _run(root)  # the same start time again: a second name, nothing replaced
    os.utime(root / "config.json", (started, started))
    assert folder.set_aside() == tmp_path / "latest-20261130-090507-2"
    assert (kept / "config.json").read_text() == "config.json"


def test_every_file_a_run_writes_is_a_run_file(tmp_path):
    names = {n for n in dir(RunFolder) if isinstance(getattr(RunFolder, n), property)}
    folder = RunFolder(tmp_path)
    assert {getattr(folder, n).name for n in names} == set(RUN_FILES)


def test_a_second_run_keeps_the_first_and_a_resumed_one_stays(image_folder, tmp_path, capsys):
    out = tmp_path / "latest"
    code, _, err = run_cli(capsys, "train", str(image_folder), *FAST, "--seed", "1",
                           "--out", str(out))  # fmt: skip
    assert code == 0, err
    first = load_file(out / "model" / "model.safetensors")
    code, stdout, err = run_cli(capsys, "train", str(image_folder), *FAST, "--seed", "2",
                                "--out", str(out))  # fmt: skip
    assert code == 0, err
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("latest-")]
    assert len(kept) == 1
    said = f"the earlier run in {out} is kept in {kept[0]}"
    assert "".join(said.split()) in "".join(stdout.split())  # the console wraps anywhere
    again = load_file(kept[0] / "model" / "model.safetensors")
    assert all((again[k] == first[k]).all() for k in first)  # the first model, untouched
    assert json.loads((kept[0] / "config.json").read_text())["seed"] == 1
    assert json.loads((out / "config.json").read_text())["seed"] == 2
    second = load_file(out / "model" / "model.safetensors")
    assert any((second[k] != first[k]).any() for k in first)
    code, stdout, err = run_cli(capsys, "train", str(image_folder), *FAST, "--seed", "2",
                                "--out", str(out), "--resume",
                                str(out / "checkpoint.safetensors"))  # fmt: skip
    assert code == 0, err
    assert "is kept in" not in stdout
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("latest-")]) == 1


def _said(line: str, stdout: str) -> bool:
    """Whether the console printed ``line`` (it wraps long paths anywhere)."""
    return "".join(line.split()) in "".join(stdout.split())


def test_a_run_folder_inside_the_data_is_not_read_as_a_class(tmp_path, capsys):
    """``--out photos/run`` with a ``photos/<class>/`` layout: the next run used to learn
    a third class, ``run``, from the first run's plots."""
    data = make_image_folder(tmp_path / "photos", n_train=8, valid_name=None)
    out = data / "run"
    for _ in range(2):
        code, stdout, err = run_cli(capsys, "train", str(data), *FAST, "--out", str(out))
        assert code == 0, err
        assert _said("data: 20 train / 4 valid images, 2 classes (green, red)", stdout)
    heading = "folders not followed: 1 (each real folder is read once; run folders are no data)"
    assert _said(heading, stdout)
    assert _said("  run: a snugfit run folder (config.json, events.jsonl): a run's plots", stdout)
    assert _said(f"the earlier run in {out} is kept in {data}/run-", stdout)


def test_a_walk_skips_a_run_folder_below_the_top_only(tmp_path):
    run = tmp_path / "red" / "old"
    for name in ("config.json", "events.jsonl", "batch.png", "loss.png"):
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_bytes(b"x")
    (tmp_path / "red" / "1.jpg").write_bytes(b"x")
    found = walk_images(tmp_path / "red")
    assert found.files == [tmp_path / "red" / "1.jpg"]
    assert [(s.path, s.reason.split(" (")[0]) for s in found.skipped] == [
        (str(run), "a snugfit run folder")
    ]
    assert walk_images(run).files == [run / "batch.png", run / "loss.png"]  # asked for: read
    assert set(RUN_MARKERS) <= set(RUN_FILES)  # what marks a run is what a run writes
