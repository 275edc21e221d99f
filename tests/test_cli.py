"""The command line: outputs of a run, and one clear line for each bad input."""

import csv
import json

import pytest

from fixtures import make_image_folder
from snugfit.app.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


TRAIN = [
    "--arch",
    "test_efficientnet",
    "--no-pretrained",
    "--bs",
    "8",
    "--size",
    "32",
    "--workers",
    "0",
]


def test_train_writes_the_run_folder_and_predict_reads_it(image_folder, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run_cli(
        capsys,
        "train",
        str(image_folder),
        *TRAIN,
        "--recipe",
        "fine_tune",
        "--epochs",
        "1",
        "--freeze-epochs",
        "1",
        "--out",
        str(out),
    )
    assert code == 0, err
    for name in (
        "model/model.safetensors",
        "model/snugfit.json",
        "config.json",
        "metrics.csv",
        "loss.png",
        "batch.png",
        "lr.png",
    ):
        assert (out / name).is_file(), name
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["arch"] == "test_efficientnet" and cfg["bs"] == 8 and cfg["epochs"] == 1
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["0", "0"]  # one frozen fit, one unfrozen fit
    assert "train_loss" in stdout and "error_rate" in stdout
    img = next((image_folder / "val" / "red").iterdir())
    code, stdout, err = run_cli(capsys, "predict", str(out / "model"), str(img))
    assert code == 0, err
    path, label, conf = stdout.strip().split("\t")
    assert path == str(img) and label in ("red", "green") and 0.5 <= float(conf) <= 1


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda p: p / "missing", "no such directory"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "no image files found"),
        (lambda p: make_image_folder(p / "one", classes=("red",)), "only one class"),
    ],
    ids=["missing", "empty", "one-class"],
)
def test_bad_data_folder_gives_one_line(tmp_path, capsys, make, expected):
    path = make(tmp_path)
    code, _, err = run_cli(capsys, "train", str(path), *TRAIN, "--out", str(tmp_path / "o"))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("snugfit: error: ")
    assert str(path) in lines[0] and expected in lines[0]


def test_folder_with_no_images(tmp_path, capsys):
    d = tmp_path / "docs" / "train" / "a"
    d.mkdir(parents=True)
    (d / "notes.txt").write_text("hello")
    code, _, err = run_cli(capsys, "train", str(tmp_path / "docs"), *TRAIN)
    assert code == 2 and "no image files found" in err and "Traceback" not in err


def test_unreadable_images_are_skipped_and_listed(image_folder, tmp_path, capsys):
    bad = image_folder / "train" / "red"
    (bad / "zero.jpg").write_bytes(b"")
    (bad / "text.jpg").write_text("this is not a picture")
    good = next(bad.glob("*.jpg")).read_bytes()
    (bad / "truncated.jpg").write_bytes(good[: len(good) // 2])
    out = tmp_path / "run"
    code, stdout, err = run_cli(
        capsys, "train", str(image_folder), *TRAIN, "--epochs", "0", "--out", str(out)
    )
    assert code == 0, err
    listed = (out / "skipped.txt").read_text()
    for name in ("zero.jpg", "text.jpg", "truncated.jpg"):
        assert name in listed
    assert "skipped 3 unreadable file(s)" in stdout


@pytest.mark.parametrize(
    "arg, value, expected",
    [
        ("--bs", "0", "argument --bs: must be a positive integer, got '0'"),
        ("--size", "big", "argument --size: must be a positive integer, got 'big'"),
        ("--epochs", "-1", "argument --epochs: must be an integer ≥ 0, got '-1'"),
        ("--lr", "-1", "argument --lr: must be a positive number, got '-1'"),
        ("--lr", "nan", "argument --lr: must be a positive number, got 'nan'"),
        ("--wd", "-0.1", "argument --wd: must be a number ≥ 0, got '-0.1'"),
        ("--valid-pct", "1.5", "argument --valid-pct: must be between 0 and 1, got '1.5'"),
        (
            "--memory-budget",
            "8 parsecs",
            "argument --memory-budget/--gpu-mem: cannot read '8 parsecs'; "
            "use e.g. 8GB, 8GiB, 7500MB or a fraction like 0.5",
        ),
        ("--memory-budget", "1.5", "argument --memory-budget/--gpu-mem: cannot read '1.5'"),
        ("--precision", "fp8", "argument --precision: invalid choice: 'fp8'"),
        ("--unfreeze", "maybe", "argument --unfreeze: invalid choice: 'maybe'"),
    ],
)
def test_bad_arguments_name_themselves(image_folder, capsys, arg, value, expected):
    with pytest.raises(SystemExit) as e:
        main(["train", str(image_folder), arg, value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("snugfit: error: ") and expected in err
    assert err.count("\n") == 1, "one line, no usage dump"


@pytest.mark.parametrize("budget", ["8GB", "8GiB", "7500MB", "0.5", "512 MiB"])
def test_budget_forms_are_accepted(budget):
    from snugfit.app.cli import build_parser

    args = build_parser().parse_args(["plan", "--memory-budget", budget])
    assert args.memory_budget == budget


def test_unknown_arch_is_one_line(image_folder, capsys):
    code, _, err = run_cli(
        capsys, "train", str(image_folder), "--arch", "resnet5O", "--no-pretrained"
    )
    assert code == 2 and "resnet5O" in err and "resnet50" in err
    assert len(err.strip().splitlines()) == 1


def test_predict_unreadable_image(image_folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        run_cli(capsys, "train", str(image_folder), *TRAIN, "--epochs", "0", "--out", str(out))[0]
        == 0
    )
    bad = tmp_path / "bad.jpg"
    bad.write_text("nope")
    code, _, err = run_cli(capsys, "predict", str(out / "model"), str(bad))
    assert code == 1 and str(bad) in err


def test_plan_what_if_prints_both_phases(capsys):
    code, out, err = run_cli(
        capsys, "plan", "--classes", "3", "--arch", "test_resnet", "--size", "64", "--bs", "8",
        "--gpu-mem", "1GB",
    )  # fmt: skip
    assert code == 0, err
    assert "frozen body (head only)" in out and "unfrozen" in out
    assert sum(line.startswith("plan: ") for line in out.splitlines()) == 2
    assert "micro-batch" in out


@pytest.mark.parametrize(
    "words, expected",
    [
        # argparse alone answered "the following arguments are required: --memory-budget"
        (
            ["plan", "--budget", "8GB"],
            "unrecognized option --budget (did you mean --memory-budget?)",
        ),
        (
            ["train", "DATA", "--frezee-epochs", "2"],
            "option --frezee-epochs (did you mean --freeze-epochs?)",
        ),
        (["train", "DATA", "--bogus=1"], "unrecognized option --bogus (see snugfit train --help)"),
    ],
)
def test_unknown_options_are_named_first(image_folder, capsys, words, expected):
    words = [str(image_folder) if w == "DATA" else w for w in words]
    with pytest.raises(SystemExit) as e:
        main(words)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1


def test_options_argparse_accepts_are_not_called_unknown():
    from snugfit.app.cli import build_parser

    train = build_parser().parse_args(["train", "d", "--epoch", "2", "--lr=1e-3", "--tta", "0"])
    assert (train.epochs, train.lr, train.tta) == (2, 1e-3, 0)


def test_plan_needs_a_readable_budget(capsys):
    with pytest.raises(SystemExit):
        main(["plan", "--arch", "test_resnet", "--gpu-mem", "eight gigs"])
    assert "cannot read 'eight gigs'" in capsys.readouterr().err


def test_train_auto_recipe_prints_its_phases_and_resumes(image_folder, tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "train",
        str(image_folder),
        *TRAIN,
        "--epochs",
        "1",
        "--head-epochs",
        "2",
        "--out",
        str(out),
    ]
    code, stdout, err = run_cli(capsys, *args)
    assert code == 0, err
    for phase in ("phase: head on precomputed features", "phase: head with data augmentation"):
        assert phase in stdout
    assert "learning rate" in stdout and "auto_fit: kept the weights after phase" in stdout
    ckpt = out / "checkpoint.safetensors"
    assert ckpt.is_file()
    rows = (out / "metrics.csv").read_text().splitlines()
    # resuming a finished run: nothing left to train, the history is kept
    code, stdout, err = run_cli(capsys, *args, "--resume", str(ckpt))
    assert code == 0, err
    assert (out / "metrics.csv").read_text().splitlines() == rows


@pytest.mark.parametrize("unfreeze", ["no", "yes"])
def test_train_unfreeze_decides_whether_the_body_trains(image_folder, tmp_path, capsys, unfreeze):
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, "train", str(image_folder), *TRAIN, "--epochs", "1",
                                "--head-epochs", "1", "--no-lr-find", "--unfreeze", unfreeze,
                                "--out", str(out))  # fmt: skip
    assert code == 0, err
    assert ("phase: unfrozen" in stdout) == (unfreeze == "yes")
    assert "BatchNorm shift" not in stdout  # asked, not measured
    config = json.loads((out / "config.json").read_text())
    assert config["unfreeze"] == unfreeze


@pytest.mark.parametrize("solve", [True, False])
def test_train_solves_a_frozen_bodys_head_unless_told_not_to(image_folder, tmp_path, capsys, solve):
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, "train", str(image_folder), *TRAIN, "--head-epochs", "1",
                                "--no-lr-find", "--unfreeze", "no", "--out", str(out),
                                *([] if solve else ["--no-solve-head"]))  # fmt: skip
    assert code == 0, err
    assert ("phase: head solved on precomputed features" in stdout) == solve
    assert ("phase: head on precomputed features" in stdout) == (not solve)
    config = json.loads((out / "config.json").read_text())
    assert config["solve_head"] is solve
    assert (config["epochs"], config["head_epochs"]) == (2, 1)  # a classifier's default, given
    # no epoch after a solve: the run still says how good the model is
    assert (out / "metrics.csv").is_file() == (not solve)
    said = [line for line in stdout.splitlines() if "error rate" in line]
    assert bool(said) == solve and (not solve or "valid loss" in said[0])


def test_train_tta_evaluates_the_final_model_and_reports_it(image_folder, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", str(image_folder), *TRAIN, "--recipe", "fine_tune", "--epochs", "1",
            "--tta", "2", "--out", str(out)]  # fmt: skip
    code, stdout, err = run_cli(capsys, *args)
    assert code == 0, err
    line = stdout[stdout.index("TTA (") :].replace("\n", " ")
    assert line.startswith("TTA (2 augmented passes blended with the plain one): valid_loss ")
    assert "error_rate" in line and "(without: " in line
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    (tta,) = [e for e in events if e["kind"] == "tta"]
    assert tta["n"] == 2 and set(tta["tta"]) == set(tta["plain"]) >= {"valid_loss", "error_rate"}
    # the plain figures are the final weights' validation: the last epoch's row
    last = list(csv.DictReader((out / "metrics.csv").open()))[-1]
    assert float(last["error_rate"]) == pytest.approx(tta["plain"]["error_rate"], abs=1e-4)
    assert "with TTA" in (out / "report.html").read_text()
    with pytest.raises(SystemExit) as e:
        run_cli(capsys, *args[:-2], "--tta", "-1")
    assert e.value.code == 2 and "argument --tta: must be an integer" in capsys.readouterr().err


def test_lr_find_command(image_folder, tmp_path, capsys):
    plot = tmp_path / "lr.png"
    code, out, err = run_cli(
        capsys, "lr-find", str(image_folder), "--arch", "test_efficientnet", "--no-pretrained", "--bs", "4",
        "--size", "32", "--workers", "0", "--num-it", "20", "--plot", str(plot),
    )  # fmt: skip
    assert code == 0, err
    lines = dict(line.split("\t") for line in out.strip().splitlines() if "\t" in line)
    assert {"valley", "minimum", "steep", "suggested"} <= lines.keys()
    assert float(lines["suggested"]) > 0 and plot.read_bytes()[:4] == b"\x89PNG"
