"""``snugfit train DATA --csv``: multi-label and single-label runs from a CSV, its check, its errors."""

import contextlib
import csv
import io
import json
from collections import Counter

import numpy as np
import pytest

from fixtures import SQUARES, colour_image, make_multilabel_csv
from snugfit.app.cli import main
from snugfit.saving.model_files import META_FILE

VOCAB = sorted(SQUARES)  # blue, green, red
TRAIN = [
    "--arch", "test_efficientnet", "--no-pretrained", "--bs", "8", "--size", "32",
    "--workers", "0", "--precision", "fp32", "--recipe", "fine_tune", "--freeze-epochs", "0",
]  # fmt: skip
MULTI = ["--csv", "labels.csv", "--fn-col", "fname", "--label-col", "labels", "--label-delim", " "]


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def multi_run(tmp_path_factory):
    """A multi-label run on 48 generated images, plus a CSV row naming a missing file."""
    root = make_multilabel_csv(tmp_path_factory.mktemp("csv") / "data", n=48)
    with (root / "labels.csv").open("a") as f:
        f.write("gone.png,red\n")  # line 50
    out = root.parent / "run"
    argv = ["train", root, *MULTI, *TRAIN, "--epochs", "2", "--lr", "1e-2", "--out", out]
    stdout, stderr = io.StringIO(), io.StringIO()  # capsys is per test: capture by hand
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main([str(a) for a in argv])
    return {"root": root, "out": out, "argv": argv, "code": code, "stdout": stdout.getvalue(),
            "stderr": stderr.getvalue()}  # fmt: skip


def test_multi_label_run_writes_its_folder(multi_run):
    out = multi_run["out"]
    assert multi_run["code"] == 0, multi_run["stderr"]
    for name in ("model/model.safetensors", "model/snugfit.json", "config.json", "check.json",
                 "metrics.csv", "loss.png", "batch.png", "report.html", "skipped.txt",
                 "checkpoint.safetensors"):  # fmt: skip
        assert (out / name).is_file(), name
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["csv"] == "labels.csv" and cfg["label_delim"] == " "
    assert cfg["fn_col"] == "fname" and cfg["label_col"] == "labels" and cfg["valid_col"] is None
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == 2 and {"accuracy_multi", "f1_samples"} <= rows[0].keys()
    assert "error_rate" not in rows[0] and "accuracy" not in rows[0]
    assert all(0 <= float(r["f1_samples"]) <= 1 for r in rows)
    assert "3 labels (multi-label)" in " ".join(multi_run["stdout"].split())
    meta = json.loads((out / "model" / META_FILE).read_text())
    assert meta["multi_label"] is True and meta["threshold"] == 0.5 and meta["vocab"] == VOCAB


def test_check_counts_per_label_and_reports_the_missing_row(multi_run):
    root, out = multi_run["root"], multi_run["out"]
    check = json.loads((out / "check.json").read_text())
    assert check["multi_label"] is True and check["classes"] == VOCAB
    assert check["csv"] == str(root / "labels.csv") and check["layout"] == "split"
    assert check["files"] == 49 and check["usable"] == 48
    assert check["images"]["train"] + check["images"]["valid"] == 48
    # per label: an image counts under each of its labels
    expected = Counter()
    for row in list(csv.DictReader((root / "labels.csv").open()))[:48]:
        expected.update(row["labels"].split())
    got = Counter({c: check["counts"]["train"][c] + check["counts"]["valid"][c] for c in VOCAB})
    assert got == expected and sum(got.values()) > 48
    [missing] = check["missing"]
    assert missing["path"] == str(root / "gone.png") and missing["label"] == "red"
    assert missing["reason"] == "no such file (listed in labels.csv, line 50)"
    assert check["unusable"]["red"] == 1 and check["unreadable"] == []
    skipped = (out / "skipped.txt").read_text()
    assert skipped == f"{root / 'gone.png'}\tno such file (listed in labels.csv, line 50)\n"
    stdout = " ".join(multi_run["stdout"].split())
    assert "missing: 1 file(s) listed but not found" in stdout
    assert "an image counts once under each of its labels" in stdout


def test_saved_model_predicts_label_lists(multi_run, capsys):
    root, out = multi_run["root"], multi_run["out"]
    images = [root / f"img_{i:03d}.png" for i in range(3)]
    code, stdout, err = run_cli(capsys, "predict", out / "model", *images)
    assert code == 0, err
    lines = stdout.splitlines()
    assert len(lines) == 3
    for line, img in zip(lines, images, strict=True):
        path, labels, probs = line.split("\t")
        assert path == str(img) and set(labels.split()) <= set(VOCAB)
        assert len(labels.split()) == len(probs.split())
        assert all(float(p) > 0.5 for p in probs.split())


def test_report_has_per_label_scores_and_no_confusion_matrix(multi_run):
    page = (multi_run["out"] / "report.html").read_text()
    assert page.count("for single-label runs only: this run is multi-label") == 2
    assert "Multi-label: each label scored on its own" in page
    for name in (*VOCAB, "macro avg", "f1 (samples avg)", "accuracy_multi"):
        assert f'<td class="l">{name}</td>' in page, name
    assert "gone.png" in page and "an image counts once under each of its labels" in page


def test_resume_a_csv_run(multi_run, capsys):
    out = multi_run["out"]
    rows = (out / "metrics.csv").read_text().splitlines()
    ckpt = out / "checkpoint.safetensors"
    code, _, err = run_cli(capsys, *multi_run["argv"], "--resume", ckpt)
    assert code == 0, err
    # a finished run: nothing left to train, the history is kept
    assert (out / "metrics.csv").read_text().splitlines() == rows


def test_check_command_reads_the_csv(multi_run, tmp_path, capsys):
    report = tmp_path / "check.json"
    code, stdout, err = run_cli(
        capsys, "check", multi_run["root"], *MULTI, "--valid-pct", "0.25", "--json", report
    )
    assert code == 0, err
    data = json.loads(report.read_text())
    # 12 of the 49 rows are split off for validation, the missing file's row among them or not
    in_valid = data["images"]["valid"] + (data["missing"][0]["split"] == "valid")
    assert data["valid_pct"] == 0.25 and in_valid == 12
    assert "gone.png: no such file (listed in labels.csv, line 50)" in stdout


def _single_label_csv(root, n=6):
    """Red and green images, ``labels.csv`` of ``file,label,is_valid`` (a third for validation)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    rows = ["file,label,is_valid"]
    for k, name in enumerate(("red", "green")):
        for i in range(n):
            colour_image(k, rng).save(root / "images" / f"{name}{i}.png")
            rows.append(f"{name}{i}.png,{name},{int(i % 3 == 0)}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_single_label_csv_trains_single_label(tmp_path, capsys):
    root, out = _single_label_csv(tmp_path / "d"), tmp_path / "run"
    code, stdout, err = run_cli(
        capsys, "train", root, "--csv", "labels.csv", "--folder", "images", "--label-col",
        "label", "--valid-col", "is_valid", *TRAIN, "--epochs", "1", "--out", out,
    )  # fmt: skip
    assert code == 0, err
    assert "data: 8 train / 4 valid images, 2 classes (green, red)" in " ".join(stdout.split())
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert {"accuracy", "error_rate"} <= rows[0].keys() and "f1_samples" not in rows[0]
    check = json.loads((out / "check.json").read_text())
    assert check["multi_label"] is False and check["layout"] == "column"
    assert check["counts"] == {"train": {"green": 4, "red": 4}, "valid": {"green": 2, "red": 2}}
    assert json.loads((out / "model" / META_FILE).read_text())["multi_label"] is False
    page = (out / "report.html").read_text()
    assert "for single-label runs only" not in page and 'alt="confusion matrix"' in page


CSV = ["--csv", "labels.csv", "--folder", "images", "--label-col", "label"]


@pytest.mark.parametrize(
    "args, expected",
    [
        ([*CSV[:4], "--label-col", "nope"], "label_col: no column 'nope' in "),
        ([*CSV, "--fn-col", "7"], "expected 8 columns, got 3"),
        (["--csv", "other.csv"], "other.csv: no such file"),
        ([*CSV, "--valid-col", "label"], "valid column value 'red' is not a boolean"),
        ([*CSV, "--valid-col", "is_valid", "--valid-pct", "0.2"], "--valid-col and --valid-pct"),
        ([*CSV, "--label-delim", ""], "argument --label-delim: must be a non-empty string"),
        (["--label-delim", ";"], "--label-delim: only with --csv"),
        (["--csv", "labels.csv"], "no usable images (none of the 12 files listed exists"),
    ],
    ids=["column", "index", "csv", "valid-col", "both-splits", "delim", "no-csv", "all-missing"],
)
def test_bad_csv_arguments_give_one_line(tmp_path, capsys, args, expected):
    root = _single_label_csv(tmp_path / "d")
    try:
        code, _, err = run_cli(capsys, "train", root, *args, *TRAIN, "--out", tmp_path / "o")
    except SystemExit as e:  # argparse's own errors
        code, err = e.code, capsys.readouterr().err
    assert code == 2
    [line] = err.strip().splitlines()
    assert line.startswith("snugfit: error: ") and expected in line, line
    assert not (tmp_path / "o").exists()


def test_lr_find_reads_a_csv_dataset(tmp_path, capsys):
    """lr-find takes train's data options; before, it read class folders only."""
    root = make_multilabel_csv(tmp_path / "data", n=16)
    plot = tmp_path / "lr.png"
    code, out, err = run_cli(
        capsys, "lr-find", root, *MULTI, "--arch", "test_efficientnet", "--no-pretrained",
        "--bs", "4", "--size", "32", "--workers", "0", "--num-it", "6", "--plot", plot,
    )  # fmt: skip
    assert code == 0, err
    assert "multi-label" in err  # the check's report, on stderr
    lines = dict(line.split("\t") for line in out.strip().splitlines() if "\t" in line)
    assert float(lines["suggested"]) > 0 and plot.is_file()
