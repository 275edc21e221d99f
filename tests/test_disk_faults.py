"""Disk faults: a full disk, no permission or a read-only filesystem, injected at chosen
writes. A required write (checkpoint, model) ends the run with one line saying what,
why, which checkpoint is intact and how to resume, and resuming gives the weights of
an uninterrupted run; an optional one (plots, report, logs, TensorBoard) warns once and
the run goes on; an unwritable ``--out`` is refused before anything runs.

The faults are injected by patching the write calls, as the tests run as any user
(root ignores permissions): safetensors' own error for the checkpoint (a Rust I/O
error, "... (os error 28)"), Python's ``OSError`` elsewhere.
"""

from __future__ import annotations

import csv
import errno
import json
import logging
import os
import shlex
import stat
from pathlib import Path

import matplotlib.figure
import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

import snugfit.app.report
import snugfit.app.run
import snugfit.callbacks.recorder
import snugfit.errors
import snugfit.events
import snugfit.saving.disk
from fixtures import make_image_folder
from snugfit.app.cli import main
from snugfit.errors import WriteError, reason_of
from snugfit.saving import checkpoint, model_files, read_checkpoint
from snugfit.saving.atomic import atomic_write
from snugfit.saving.disk import append_text, check_writable, optional
from test_cli import TRAIN

ARGS = [*TRAIN, "--precision", "fp32", "--recipe", "fine_tune", "--freeze-epochs", "1",
        "--epochs", "2"]  # fmt: skip
CKPT = "checkpoint.safetensors"
REASONS = {
    errno.ENOSPC: ("no space left on device", "free some space"),
    errno.EACCES: ("permission denied", "make the folder writable"),
    errno.EROFS: ("read-only filesystem", "make the filesystem writable"),
}
FAULTS = pytest.mark.parametrize("fault", list(REASONS), ids=errno.errorcode.get)


def os_error(n: int, filename=None) -> OSError:
    return OSError(n, os.strerror(n), *([str(filename)] if filename else []))


def rust_error(n: int) -> SafetensorError:
    """What safetensors raises when the OS refuses its write."""
    return SafetensorError(f"Error while serializing: I/O error: {os.strerror(n)} (os error {n})")


def results(out: Path) -> tuple[dict[str, torch.Tensor], list[dict]]:
    with open(out / "metrics.csv", newline="") as f:
        return load_file(str(out / "model" / "model.safetensors")), list(csv.DictReader(f))


def assert_same_run(out: Path, reference) -> None:
    """The weights and metrics rows of an uninterrupted run (times aside)."""
    weights, rows = results(out)
    ref_weights, ref_rows = reference
    assert weights.keys() == ref_weights.keys()
    assert all(torch.allclose(weights[k], ref_weights[k], atol=1e-6) for k in weights)
    assert len(rows) == len(ref_rows) == 3  # one frozen epoch, two unfrozen
    for row, ref in zip(rows, ref_rows, strict=True):
        assert {k: v for k, v in row.items() if k != "time"} == {
            k: v for k, v in ref.items() if k != "time"
        }


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("disk") / "data")


@pytest.fixture(scope="module")
def reference(data):
    """The results of an uninterrupted run."""
    out = data.parent / "reference"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SNUGFIT_CACHE", str(data.parent / "cache"))  # never the user's
        torch.set_num_threads(2)  # as the tests' runs
        assert main(["train", str(data), *ARGS, "--out", str(out)]) == 0
    return results(out)


def train(capsys, data: Path, out: Path, *extra: str) -> tuple[int, list[str]]:
    code = main(["train", str(data), *ARGS, "--out", str(out), *extra])
    return code, capsys.readouterr().err.splitlines()


def resume_from(line: str, capsys) -> int:
    """Run the command a stopped run printed to resume it."""
    command = shlex.split(line.split("then resume with: ", 1)[1])
    assert command[0] == "snugfit" and command[-2] == "--resume"
    code = main(command[1:])
    assert code == 0, capsys.readouterr().err
    return code


# -- a required write fails: one line, the checkpoint intact, resume ---------------------


@FAULTS
def test_a_failed_checkpoint_write_ends_with_one_line_and_resumes_to_the_same_weights(
    data, reference, tmp_path, capsys, monkeypatch, fault
):
    out = tmp_path / "run"
    ckpt = out / CKPT
    real, calls, before = checkpoint.save_file, [], {}

    def save_file(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 3:  # the last epoch's checkpoint: two were written before it
            before["bytes"] = ckpt.read_bytes()
            Path(filename).write_bytes(b"the first part of a checkpoint")
            raise rust_error(fault)
        return real(tensors, filename, metadata)

    monkeypatch.setattr(checkpoint, "save_file", save_file)
    code, err = train(capsys, data, out)
    reason, fix = REASONS[fault]
    assert code == 2 and not any("Traceback" in line for line in err), err
    assert [line for line in err if "error" in line] == [err[-1]]
    assert err[-1].startswith(
        f"snugfit: error: cannot write {ckpt}: {reason}; {ckpt} is intact (it goes on at "
        f"fit 1, epoch 1, batch 0): {fix}, then resume with: snugfit train {data} "
    ), err[-1]
    assert err[-1].endswith(f" --resume {ckpt}")
    # nothing written is lost: the checkpoint before the failed write, whole; no temporary
    assert ckpt.read_bytes() == before["bytes"]
    assert read_checkpoint(ckpt)[1]["position"] == {"fit_index": 1, "epoch": 1, "iter": 0}
    assert not list(out.glob(".*.tmp-*"))
    assert len(list(csv.DictReader((out / "metrics.csv").open()))) == 3  # the 3rd epoch ran
    assert "stopped: cannot write" in (out / "report.html").read_text("utf-8")

    monkeypatch.setattr(checkpoint, "save_file", real)  # fixed
    resume_from(err[-1], capsys)
    assert_same_run(out, reference)


def test_a_failed_model_write_ends_with_one_line_and_resuming_writes_the_model(
    data, reference, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    real = model_files.save_model

    def save_model(model, filename, *args, **kwargs):
        raise os_error(errno.EACCES, filename)

    monkeypatch.setattr(model_files, "save_model", save_model)
    code, err = train(capsys, data, out)
    assert code == 2 and [line for line in err if "error" in line] == [err[-1]], err
    ckpt = out / CKPT
    assert err[-1].startswith(
        f"snugfit: error: cannot write {out / 'model' / 'model.safetensors'}: permission "
        f"denied; {ckpt} is intact (it goes on at fit 2, epoch 0, batch 0): make the folder "
        "writable, then resume with: "
    ), err[-1]
    assert not (out / "model" / "model.safetensors").exists()

    monkeypatch.setattr(model_files, "save_model", real)
    resume_from(err[-1], capsys)
    assert_same_run(out, reference)


def test_a_failed_write_before_any_checkpoint_says_to_run_again(
    data, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(checkpoint, "save_file", FailFirst(None, 10**9, rust_error(errno.ENOSPC)))
    out = tmp_path / "run"
    code, err = train(capsys, data, out)
    assert code == 2
    assert err[-1] == (
        f"snugfit: error: cannot write {out / CKPT}: no space left on device; no checkpoint "
        "was written yet: free some space, then run the same command again"
    )
    assert not (out / CKPT).exists()


# -- an optional write fails: a warning, the run goes on ---------------------------------


class FailFirst:
    """``fn``, whose first ``n`` calls raise ``error`` instead."""

    def __init__(self, fn, n: int, error: Exception):
        self.fn, self.n, self.error, self.calls = fn, n, error, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls <= self.n:
            raise self.error
        return self.fn(*args, **kwargs)


def test_optional_outputs_that_cannot_be_written_warn_once_and_the_run_goes_on(
    data, reference, tmp_path, capsys, monkeypatch, caplog
):
    from torch.utils.tensorboard import SummaryWriter

    savefig = matplotlib.figure.Figure.savefig

    def no_png_files(fig, target, *args, **kwargs):  # in-memory PNGs (the report's) work
        if isinstance(target, (str, os.PathLike)):
            raise os_error(errno.ENOSPC, target)
        return savefig(fig, target, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", no_png_files)
    # metrics.csv: the first row; events.jsonl: its first two writes; the report: read-only
    enospc = os_error(errno.ENOSPC)
    recorder_append = FailFirst(snugfit.callbacks.recorder.append_text, 1, enospc)
    monkeypatch.setattr(snugfit.callbacks.recorder, "append_text", recorder_append)
    events_append = FailFirst(snugfit.events.append_text, 2, enospc)
    monkeypatch.setattr(snugfit.events, "append_text", events_append)
    report_write = FailFirst(snugfit.app.report.atomic_write, 1, os_error(errno.EROFS))
    monkeypatch.setattr(snugfit.app.report, "atomic_write", report_write)
    add_scalar = FailFirst(SummaryWriter.add_scalar, 10**9, enospc)
    monkeypatch.setattr(SummaryWriter, "add_scalar", add_scalar)

    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="snugfit"):
        code, err = train(capsys, data, out, "--tensorboard")
    assert code == 0, err
    warned = [m for m in caplog.messages if m.endswith("going on without it")]
    assert len(warned) == 7, warned  # each output once
    for name, reason in [("batch.png", "no space left on device"), ("loss.png", "no space"),
                         ("lr.png", "no space"), ("metrics.csv", "no space"),
                         ("events.jsonl", "no space"), ("report.html", "read-only filesystem"),
                         (f"{out / 'tensorboard'}/", "no space")]:  # fmt: skip
        assert sum(name in line and reason in line for line in warned) == 1, (name, warned)
    assert add_scalar.calls == 1  # no more logging after the first failure
    # what can be written again is complete: every row, every event
    assert_same_run(out, reference)
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert events[0]["kind"] == "run_start" and events[-1]["kind"] == "run_end"
    assert [e["kind"] for e in events].count("epoch") == 3
    assert not any((out / name).exists() for name in ("batch.png", "loss.png", "report.html"))


def test_append_text_writes_whole_lines_or_nothing(tmp_path, monkeypatch):
    path = tmp_path / "log.jsonl"
    append_text(path, "one\n")
    real_write = os.write

    def half_then_full(fd, data):  # the disk fills up after half of the line
        if len(data) > 2:
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise os_error(errno.ENOSPC)

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(WriteError, match=f"cannot write {path}: no space left on device"):
        append_text(path, "two\n")
    monkeypatch.setattr(os, "write", real_write)
    assert path.read_text() == "one\n"  # the half line was cut off again
    with optional("log.jsonl"):
        raise os_error(errno.EROFS)  # a disk fault is swallowed (and warned about)
    with pytest.raises(ZeroDivisionError), optional("log.jsonl"):
        raise ZeroDivisionError  # anything else is not


# -- an unwritable destination is refused first ------------------------------------------


@pytest.mark.parametrize(
    "fault, make, expected",
    [
        (None, lambda p: (p / "file").write_text("x") and p / "file" / "run",
         "a file is in the way of a folder: {tmp}/file"),
        (errno.EACCES, lambda p: p / "new" / "run", "permission denied"),
        (errno.EROFS, lambda p: p / "new" / "run", "read-only filesystem"),
        (errno.ENOSPC, lambda p: p / "new" / "run", "no space left on device"),
    ],
    ids=["file-in-the-way", "EACCES", "EROFS", "ENOSPC"],
)  # fmt: skip
def test_an_unwritable_out_is_one_line_before_the_data_check(
    data, tmp_path, capsys, monkeypatch, fault, make, expected
):
    out = make(tmp_path)
    if fault is not None:
        monkeypatch.setattr(snugfit.errors.tempfile, "mkstemp", FailFirst(None, 1, os_error(fault)))
    code = main(["train", str(data), *ARGS, "--out", str(out)])
    cap = capsys.readouterr()
    assert code == 2 and "check:" not in cap.out  # the data check did not run
    assert cap.err == (
        f"snugfit: error: --out {out}: cannot write there ({expected.format(tmp=tmp_path)})\n"
    )
    assert not (tmp_path / "new").exists()  # the check left nothing behind


def test_predict_and_export_check_their_destinations_first(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    model = tmp_path / "no-model-here"  # the check comes before the model is read
    in_the_way = "cannot write there (a file is in the way of a folder"
    for argv, line in [
        (["predict", str(model), "x.jpg", "--out", str(blocker / "masks")],
         f"--out {blocker / 'masks'}: {in_the_way}: {blocker})"),
        (["predict", str(model), "x.jpg", "--csv", str(blocker / "p.csv")],
         f"--csv {blocker}: {in_the_way})"),
        (["export", str(model), "--onnx", "--out", str(blocker / "m.onnx")],
         f"--out {blocker}: {in_the_way})"),
    ]:  # fmt: skip
        assert main(argv) == 2
        assert capsys.readouterr().err == f"snugfit: error: {line}\n"
    check_writable(tmp_path / "a" / "b", "--out")  # a folder that can be made passes
    assert not (tmp_path / "a").exists()


# -- files: atomic, with the umask's mode ------------------------------------------------


def test_run_files_are_written_atomically(data, tmp_path, capsys, monkeypatch):
    replaced = []
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        replaced.append(Path(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    out = tmp_path / "run"
    code, err = train(capsys, data, out)
    assert code == 0, err
    names = {p.relative_to(out).as_posix() for p in replaced if out in p.parents}
    expected = {"config.json", "check.json", "batch.png", "loss.png", "lr.png", "report.html"}
    expected |= {CKPT, "model/model.safetensors", "model/snugfit.json"}
    assert expected - names == set()  # metrics.csv and events.jsonl: appended, line by line
    # a write that fails leaves the file as it was
    config = (out / "config.json").read_bytes()

    def half(tmp):
        tmp.write_text('{"arch": ')
        raise os_error(errno.ENOSPC)

    with pytest.raises(WriteError, match="no space left on device"):
        atomic_write(out / "config.json", half)
    assert (out / "config.json").read_bytes() == config
    assert not list(out.glob(".*.tmp-*"))


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077], ids=oct)
def test_written_files_get_the_mode_of_the_umask(data, tmp_path, capsys, umask):
    old = os.umask(umask)
    try:
        out = tmp_path / "run"
        code, err = train(capsys, data, out, "--epochs", "1")
    finally:
        os.umask(old)
    assert code == 0, err
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {out / CKPT, out / "model" / "model.safetensors", out / "config.json"} <= set(files)
    modes = {p.relative_to(out).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in files}
    assert modes == dict.fromkeys(modes, 0o666 & ~umask)


def test_reason_of_reads_python_and_rust_errors():
    assert reason_of(os_error(errno.EDQUOT)) == "disk quota exceeded"
    assert reason_of(rust_error(errno.EACCES)) == "permission denied"
    assert reason_of(ValueError("bad")) == "ValueError: bad"


def test_a_fault_nobody_expected_is_still_one_line(data, tmp_path, capsys, monkeypatch):
    """Any disk fault that escapes a command ends as one line, not a traceback."""
    monkeypatch.setattr(
        snugfit.app.run, "check_data", FailFirst(None, 1, os_error(errno.EROFS, "/x/y"))
    )
    assert main(["train", str(data), *ARGS, "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == "snugfit: error: /x/y: read-only filesystem\n"
