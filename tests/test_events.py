"""Logging: the JSON-lines event log of a run, and TensorBoard scalars equal to metrics.csv."""

from __future__ import annotations

import csv
import json
import math
import sys

import pytest

from snugfit.app.cli import main
from snugfit.errors import NonFiniteLoss
from snugfit.events import EventLog, JsonLinesSink, read_events, runs
from test_cli import TRAIN
from test_learner import fake_dls, make_learner
from test_nonfinite import PoisonLoss
from test_oom import inject_oom
from test_report import PressCtrlC


def kinds_in_order(events: list[dict], expected: list[str]) -> bool:
    """Whether ``expected`` occurs in the kinds of ``events`` in this order (gaps allowed)."""
    it = iter(e["kind"] for e in events)
    return all(any(k == want for k in it) for want in expected)


def test_event_log_sinks_replay_and_json_lines(tmp_path):
    log = EventLog()
    log.emit("freeze", frozen_to=6, groups=7)
    path = tmp_path / "events.jsonl"
    log.add_sink(JsonLinesSink(path))  # gets the event before it, then each new one
    log.emit("nonfinite", value=float("nan"), at={"lr": float("inf")}, where=tmp_path)
    lines = path.read_text().splitlines()
    assert [json.loads(line)["kind"] for line in lines] == ["freeze", "nonfinite"]
    # strict JSON (no NaN literal): non-finite numbers and paths become strings
    last = json.loads(lines[1], parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))
    assert last["value"] == "nan" and last["at"] == {"lr": "inf"} and last["where"] == str(tmp_path)
    assert [e["kind"] for e in log.of("nonfinite", "freeze")] == ["freeze", "nonfinite"]
    with pytest.raises(ValueError, match="'time' and 'kind'"):
        log.emit("epoch", time=1.0)
    with path.open("a") as f:
        f.write('{"kind": "cut sh')  # a line a killed run left unfinished
    assert [e["kind"] for e in read_events(path)] == ["freeze", "nonfinite"]


def test_train_writes_events_jsonl_in_order(image_folder, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", str(image_folder), *TRAIN, "--out", str(out), "--epochs", "1"]
    code = main([*args, "--head-epochs", "1", "--memory-budget", "1GB"])
    assert code == 0, capsys.readouterr().err
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert all(isinstance(e["time"], float) and isinstance(e["kind"], str) for e in events)
    expected = ["run_start", "data", "freeze", "recipe_start"]  # auto_fit freezes the body
    expected += ["phase", "plan", "lr", "fit_start", "epoch", "checkpoint", "fit_end"]  # head
    expected += ["phase", "fit_start", "epoch", "checkpoint", "fit_end"]  # head, augmented
    expected += ["freeze", "phase", "fit_start", "plan", "epoch", "checkpoint", "fit_end"]
    expected += ["kept", "run_end"]
    assert kinds_in_order(events, expected), [e["kind"] for e in events]
    assert events[-1] == {**events[-1], "kind": "run_end", "status": "completed"}
    phases = [e["name"] for e in events if e["kind"] == "phase"]
    assert phases == [
        "head on precomputed features",
        "head with data augmentation",
        "unfrozen, discriminative learning rates",
    ]
    plans = [e for e in events if e["kind"] == "plan"]
    assert [p["frozen_to"] for p in plans] == [6, 0]  # the head's, then everything's
    assert all(p["candidates"][p["chosen"]]["fits"] and p["summary"] for p in plans)
    # each epoch's event holds its metrics.csv row
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    epochs = [e for e in events if e["kind"] == "epoch"]
    assert [e["fit"] for e in epochs] == [0, 1, 2] and len(rows) == 3
    for row, e in zip(rows, epochs, strict=True):
        for name in ("train_loss", "valid_loss", "accuracy", "error_rate"):
            assert float(row[name]) == pytest.approx(e[name], abs=1e-6)
        assert float(row["time"]) == pytest.approx(e["seconds"], abs=1e-6)
        assert len(e["lrs"]) == 7  # one per layer group


def test_oom_nonfinite_and_interrupt_are_logged():
    learn = make_learner(dls=fake_dls(n_batches=2, bs=8))
    inject_oom(learn.model, lambda x: learn.model.training and len(x) > 4)
    learn.fit(1, lr=1e-3)
    ooms = learn.events.of("oom")
    assert ooms and [{k: e[k] for k in learn.oom_events[0]} for e in ooms] == learn.oom_events

    with pytest.raises(NonFiniteLoss, match="loss is nan"):
        learn.fit(1, lr=1e-3, cbs=[PoisonLoss([1])])
    stop, end = learn.events.records[-2:]
    assert stop["kind"] == "nonfinite" and math.isnan(stop["value"])
    assert stop["at"]["batch"] == 1 and stop["message"].startswith("loss is nan")
    assert end["kind"] == "fit_end"

    with pytest.raises(KeyboardInterrupt):
        learn.fit(1, lr=1e-3, cbs=[PressCtrlC(fit_index=0)])
    stop, end = learn.events.records[-2:]
    assert stop == {**stop, "kind": "interrupt", "fit": 0, "epoch": 0, "batch": 0}
    assert end["kind"] == "fit_end"


def test_tensorboard_scalars_equal_metrics_csv(image_folder, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    args = ["train", str(image_folder), *TRAIN, "--out", str(out), "--tensorboard"]
    code = main([*args, "--recipe", "fine_tune", "--epochs", "2", "--freeze-epochs", "1"])
    assert code == 0, capsys.readouterr().err
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == 3
    tags = set(acc.Tags()["scalars"])
    assert {"train_loss", "valid_loss", "accuracy", "error_rate", "time", "ooms"} <= tags
    for name in ("train_loss", "valid_loss", "accuracy", "error_rate", "time", "ooms"):
        scalars = acc.Scalars(name)
        assert [s.step for s in scalars] == [0, 1, 2], name  # one step per epoch, all fits
        for s, row in zip(scalars, rows, strict=True):
            assert s.value == pytest.approx(float(row[name]), rel=1e-5, abs=1e-6), name
    # the learning rates: the epoch's last batch's, per layer group, as in the event log
    epochs = [e for e in read_events(out / "events.jsonl") if e["kind"] == "epoch"]
    groups = [t for t in tags if t.startswith("lr/group_")]
    assert len(groups) == len(epochs[0]["lrs"])
    for g in range(len(groups)):
        lrs = [s.value for s in acc.Scalars(f"lr/group_{g}")]
        assert lrs == pytest.approx([e["lrs"][g] for e in epochs], rel=1e-5)


def test_tensorboard_missing_is_one_error_line(image_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    out = tmp_path / "run"
    code = main(["train", str(image_folder), *TRAIN, "--out", str(out), "--tensorboard"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("snugfit: error: --tensorboard: the tensorboard package is not installed")
    assert "pip install 'snugfit[tensorboard]'" in err
    assert not out.exists()  # failed before the data check and before any output


def test_each_run_of_a_folder_begins_with_run_start_and_the_report_shows_the_last(
    image_folder, tmp_path, capsys, monkeypatch
):
    """Interrupted, then resumed: events.jsonl holds two runs, each from its run_start
    on (with what building the learner logged after it), and the report describes the
    resumed one."""
    import snugfit.app.run
    from test_report import with_learner

    build = snugfit.app.run.learner_for
    with_learner(monkeypatch, lambda learn: learn.cbs.append(PressCtrlC(fit_index=1)))
    out = tmp_path / "run"
    args = ["train", str(image_folder), *TRAIN, "--out", str(out), "--recipe", "fine_tune",
            "--epochs", "1", "--freeze-epochs", "1", "--memory-budget", "1GB",
            "--checkpointing"]  # fmt: skip
    assert main(args) == 130, capsys.readouterr().err
    monkeypatch.setattr(snugfit.app.run, "learner_for", build)
    ckpt = out / "checkpoint.safetensors"
    assert main([*args, "--resume", str(ckpt)]) == 0, capsys.readouterr().err

    first, second = runs(read_events(out / "events.jsonl"))
    for run, resume in ((first, None), (second, str(ckpt))):
        assert run[0] == {**run[0], "kind": "run_start", "resume": resume}
        # --checkpointing is set while the learner is built, before run_start is emitted
        assert run[1]["kind"] == "memory" and run[1]["why"] == "asked for"
        assert [e["kind"] for e in run].count("run_start") == 1
    assert first[-1]["status"] == "interrupted (Ctrl-C)" and second[-1]["status"] == "completed"
    assert [e["kind"] for e in first].count("plan") == 2  # the head's, the unfrozen fit's
    assert "plan" not in [e["kind"] for e in second]  # the checkpoint's settings are kept
    page = (out / "report.html").read_text("utf-8")
    memory = page[page.index('<section id="memory">') :]
    memory = memory[: memory.index("</section>")]
    assert "this run resumed with its checkpoint&#x27;s settings" in memory
    assert f"{ckpt} at fit 1, epoch 0, batch 1" in page
