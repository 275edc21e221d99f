"""The data check: each problem of a messy folder reported exactly, and training on the rest."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures import SQUARES, colour_image, make_image_folder, make_multilabel_csv
from messy import UNICODE_NAME, make_messy_folder
from snugfit.app.cli import main
from snugfit.data.check import LEAK, REPEAT, TWO_LABELS, check_folder
from snugfit.data.decode import open_image
from snugfit.data.loaders import ImageDataLoaders
from snugfit.errors import SnugfitError

VOCAB = sorted(SQUARES)
TRAIN = [
    "--arch", "test_efficientnet", "--no-pretrained", "--bs", "8", "--size", "32",
    "--workers", "0",
]  # fmt: skip


@pytest.fixture
def messy(tmp_path):
    return make_messy_folder(tmp_path / "messy")


def _rel(report, path: str) -> str:
    return Path(path).relative_to(report.root).as_posix()


def test_check_reports_each_problem_of_a_messy_folder(messy):
    report = check_folder(messy.root, size=128, workers=2)  # tiny: a side under 128 / 4 px
    assert report.layout == "folders" and report.classes == ["ants", "bees", "moths"]
    assert report.counts == messy.counts
    assert report.files == sum(map(sum, (d.values() for d in messy.counts.values()))) + len(
        messy.unreadable
    )
    # the exact reason for each unreadable file, and nothing else unreadable
    assert {_rel(report, b.path): b.reason for b in report.unreadable} == messy.unreadable
    bad = {b.path: b for b in report.unreadable}
    assert bad[str(messy.root / "train/moths/notes.jpg")].label == "moths"
    assert all(b.split == "train" for b in report.unreadable)
    # odd formats are usable: decoded to RGB, not reported
    for rel in messy.odd_but_fine:
        assert str(messy.root / rel) not in bad
        assert open_image(messy.root / rel).mode == "RGB"
    assert open_image(messy.root / "train/ants/rotated.jpg").size == (36, 48)  # upright
    # duplicates: each pair, with what makes it a problem
    found = {
        (tuple(d.kinds), frozenset(_rel(report, p) for p in d.paths)) for d in report.duplicates
    }
    assert found == {((kind,), frozenset(paths)) for kind, paths in messy.duplicates}
    assert {LEAK, TWO_LABELS, REPEAT} == {d.kinds[0] for d in report.duplicates}
    leak = next(d for d in report.duplicates if d.kinds == [LEAK])
    assert sorted(leak.splits) == ["train", "valid"] and leak.labels == ["bees", "bees"]
    assert {_rel(report, t.path): (t.width, t.height) for t in report.tiny} == messy.tiny
    assert {_rel(report, e.path): e.reason for e in report.empty} == messy.empty
    assert report.imbalance == pytest.approx(14 / 7) and not report.imbalanced
    assert report.usable == 14 + 7 + 3 + 4
    assert report.problems == len(messy.unreadable) + 3 + 1 + len(messy.empty)
    # the table and its lines name every problem
    lines = "\n".join(report.lines())
    assert "unreadable: 6 file(s), skipped by training" in lines
    assert "train/ants/bomb.png: image too large (possible decompression bomb)" in lines
    assert f"repeat in a class: train/ants/ants_0.jpg = train/ants/{UNICODE_NAME}" in lines
    assert "train/valid leak: train/bees/bees_2.jpg = val/bees/leak.jpg" in lines
    assert "train/ants/tiny.png: 16x12" in lines and "val/wasps: no image files" in lines


def test_json_report_is_plain_and_complete(messy, tmp_path):
    report = check_folder(messy.root)
    data = json.loads(report.to_json(tmp_path / "check.json").read_text("utf-8"))
    assert data == report.to_dict()  # plain types survive the round trip unchanged
    assert data["usable"] == 28 and data["files"] == 34 and data["imbalanced"] is False
    assert data["counts"] == messy.counts
    assert {Path(u["path"]).name: u["reason"] for u in data["unreadable"]}["zero.jpg"] == (
        "empty file"
    )
    assert UNICODE_NAME in (tmp_path / "check.json").read_text("utf-8")  # not \\u-escaped


def test_the_split_is_the_one_training_uses(tmp_path):
    root = make_image_folder(tmp_path / "flat", n_train=9, n_valid=3, valid_name=None)
    (root / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff")
    report = check_folder(root, valid_pct=0.25, seed=3)
    assert report.layout == "split" and report.valid_pct == 0.25
    dls = ImageDataLoaders.from_folder(
        root, valid_pct=0.25, seed=3, num_workers=0, cache=False, unreadable=report.unreadable_files
    )
    assert (
        dls.skipped == report.unreadable_files == {str(root / "red" / "broken.jpg"): "not an image"}
    )
    for split, items in (("train", dls.train_items), ("valid", dls.valid_items)):
        per_class = {c: sum(dls.vocab[lab] == c for _, lab in items) for c in dls.vocab}
        assert report.counts[split] == per_class


def test_known_unreadable_files_are_not_opened_again(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "d", n_train=3, n_valid=1)
    bad = root / "train" / "red" / "bad.jpg"
    bad.write_bytes(b"")
    opened = []
    real_open = Image.open
    monkeypatch.setattr(
        Image, "open", lambda p, *a, **k: opened.append(Path(p)) or real_open(p, *a, **k)
    )
    dls = ImageDataLoaders.from_folder(
        root, num_workers=0, cache=False, unreadable={str(bad): "empty file (checked)"}
    )
    assert dls.skipped == {str(bad): "empty file (checked)"}
    assert bad not in opened and len(opened) == 8  # the other headers are still read
    assert all(p != bad for p, _ in dls.train_items)


def test_imbalance_is_flagged_above_the_threshold(tmp_path):
    root = make_image_folder(tmp_path / "d", n_train=11, n_valid=1)
    for f in sorted((root / "train" / "green").iterdir())[1:]:
        f.unlink()
    report = check_folder(root)
    assert report.counts["train"] == {"green": 1, "red": 11}
    assert report.imbalance == 11.0 and report.imbalanced
    assert any(
        line.startswith("imbalance: 11.0x") and "green: 1" in line for line in report.lines()
    )
    assert not check_folder(root, max_imbalance=11).imbalanced


def _fails(root: Path, capsys, command: str = "check") -> str:
    extra = [*TRAIN, "--out", str(root.parent / "run")] if command == "train" else []
    code = main([command, str(root), *extra])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("snugfit: error: "), err
    return lines[0]


def test_no_readable_image_is_one_line(tmp_path, capsys):
    root = tmp_path / "junk"
    for rel in ("train/a/x.jpg", "train/b/y.png", "val/a/z.jpg"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"" if rel.endswith("x.jpg") else b"<html></html>")
    line = _fails(root, capsys)
    assert f"{root}: no readable images (3 image files, none can be decoded" in line
    with pytest.raises(SnugfitError, match="no readable images"):
        check_folder(root)


@pytest.mark.parametrize("command", ["check", "train"])
def test_single_readable_class_is_one_line(tmp_path, capsys, command):
    root = make_image_folder(tmp_path / "d", n_train=3, n_valid=1)
    for f in (root / "train" / "green").iterdir():
        f.write_bytes(f.read_bytes()[:300])  # truncated
    line = _fails(root, capsys, command)
    assert "only one class ('red') has readable training images; need at least two" in line
    assert not (tmp_path / "run").exists()  # train stopped before writing anything


def test_check_command_prints_the_table_and_writes_json(messy, tmp_path, capsys):
    out = tmp_path / "report.json"
    code = main(["check", str(messy.root), "--json", str(out), "--size", "128"])
    stdout = capsys.readouterr().out
    assert code == 0
    for text in ("ants", "bees", "moths", "14", "unreadable: 6 file(s)", "duplicates: 3 group(s)",
                 "tiny images: 1 with a side under 32 px", "empty class folders: 3",
                 f"report: {out}"):  # fmt: skip
        assert text in stdout, text
    assert json.loads(out.read_text("utf-8"))["usable"] == 28
    assert "cannot write the report" in _fails_json(messy.root, tmp_path, capsys)


def _fails_json(root, tmp_path, capsys) -> str:
    code = main(["check", str(root), "--json", str(tmp_path / "no" / "such" / "dir.json")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    return err


def test_train_on_a_messy_folder_uses_the_readable_images(messy, tmp_path, capsys, caplog):
    out = tmp_path / "run"
    code = main(["train", str(messy.root), *TRAIN, "--recipe", "fine_tune", "--epochs", "1",
                 "--freeze-epochs", "0", "--out", str(out)])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    stdout = " ".join(captured.out.split())  # rich wraps long lines
    check = json.loads((out / "check.json").read_text("utf-8"))
    assert check["counts"] == messy.counts and len(check["unreadable"]) == 6
    skipped = dict(line.split("\t") for line in (out / "skipped.txt").read_text().splitlines())
    assert skipped == {u["path"]: u["reason"] for u in check["unreadable"]}
    assert f"skipped 6 unreadable file(s); list in {out / 'skipped.txt'}" in stdout
    assert "data: 21 train / 7 valid images, 3 classes" in stdout
    assert "unreadable: 6 file(s)" in stdout  # the check's report comes first
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == 1 and np.isfinite(float(rows[0]["train_loss"]))
    # the skips were known from the check: no warning per file while loading
    assert "skipping " not in captured.err
    # a class whose every training file is unreadable is said, not trained in silence
    assert "class(es) 'moths' have no readable training image" in caplog.text


@pytest.mark.slow
def test_check_is_fast_on_real_photos(hymenoptera, tmp_path):
    report = check_folder(hymenoptera)
    assert report.counts == {"train": {"ants": 124, "bees": 121}, "valid": {"ants": 70, "bees": 83}}
    assert report.problems == 0 and report.files == 398
    assert report.seconds < 10  # measured ~0.5 s on 2 cores (JPEGs decoded at 1/8 scale)


def test_colour_images_are_not_tiny_at_the_minimum(tmp_path):
    root = tmp_path / "d"
    rng = np.random.default_rng(0)
    for k, cls in enumerate(("a", "b")):
        for split in ("train", "val"):
            (root / split / cls).mkdir(parents=True)
            colour_image(k, rng, (32, 32)).save(root / split / cls / "x.png")
            colour_image(k, rng, (31, 64)).save(root / split / cls / "y.png")
    report = check_folder(root, size=128)  # training at 128: tiny under 32 px
    assert sorted(Path(t.path).relative_to(root).as_posix() for t in report.tiny) == [
        "train/a/y.png", "train/b/y.png", "val/a/y.png", "val/b/y.png",
    ]  # fmt: skip


def test_tiny_images_are_those_training_enlarges_more_than_4x(tmp_path, capsys):
    """The threshold follows the training size: a quarter of its shorter side."""
    root = tmp_path / "d"
    rng = np.random.default_rng(0)
    sizes = {"a.png": (40, 48), "b.png": (64, 200), "c.png": (56, 56), "d.png": (100, 30)}
    for k, cls in enumerate(("x", "y")):
        for split in ("train", "val"):
            (root / split / cls).mkdir(parents=True)
            for name, wh in sizes.items():
                colour_image(k, rng, wh).save(root / split / cls / name)

    def tiny(**kw) -> set[str]:
        report = check_folder(root, **kw)
        return {Path(t.path).name for t in report.tiny if "train/x" in t.path}

    assert tiny() == {"a.png", "d.png"}  # the default, 224: under 56 px
    assert tiny(size=160) == {"d.png"}  # under 40 px: 40 itself is 4x exactly
    assert tiny(size=256) == {"a.png", "c.png", "d.png"}  # under 64 px
    assert tiny(size=(120, 400)) == set()  # the shorter side, 120: under 30 px
    assert tiny(size=(124, 400)) == {"d.png"}  # under 31 px
    assert tiny(size=32) == set()
    assert main(["check", str(root), "--size", "256"]) == 0
    out = capsys.readouterr().out
    assert "tiny images: 12 with a side under 64 px (1/4 of the training size: training " in out
    # train checks at its own --size (check.json keeps the threshold)
    run = tmp_path / "run"
    assert main(["train", str(root), *TRAIN, "--recipe", "fine_tune", "--epochs", "1",
                 "--freeze-epochs", "0", "--out", str(run)]) == 0  # fmt: skip
    check = json.loads((run / "check.json").read_text("utf-8"))
    assert check["min_side"] == 8 and check["tiny"] == []  # --size 32


def test_images_over_pillows_pixel_limit_are_listed(tmp_path, monkeypatch):
    """Between 1x and 2x Image.MAX_IMAGE_PIXELS Pillow decodes with a warning: listed as
    large, file by file (over 2x it refuses: unreadable)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)
    root = tmp_path / "d"
    rng = np.random.default_rng(0)
    for k, cls in enumerate(("x", "y")):
        for split in ("train", "val"):
            (root / split / cls).mkdir(parents=True)
            colour_image(k, rng, (30, 30)).save(root / split / cls / "ok.png")
    colour_image(0, rng, (50, 30)).save(root / "train" / "x" / "big.png")  # 1500: at the limit
    colour_image(0, rng, (40, 40)).save(root / "train" / "x" / "bigger.png")  # 1600
    colour_image(1, rng, (60, 50)).save(root / "val" / "y" / "biggest.png")  # 3000: 2x
    colour_image(1, rng, (60, 60)).save(root / "train" / "y" / "bomb.png")  # 3600: over 2x
    report = check_folder(root, size=32)
    assert [(_rel(report, t.path), t.width, t.height) for t in report.large] == [
        ("train/x/bigger.png", 40, 40), ("val/y/biggest.png", 60, 50),
    ]  # fmt: skip
    assert [(_rel(report, b.path), b.reason) for b in report.unreadable] == [
        ("train/y/bomb.png", "image too large (possible decompression bomb)")
    ]
    assert report.counts == {"train": {"x": 3, "y": 1}, "valid": {"x": 1, "y": 2}}
    assert report.problems == 3 and report.to_dict()["max_pixels"] == 1500
    lines = report.lines()
    i = lines.index(
        "large images: 2 over Pillow's limit of 1,500 pixels (Image.MAX_IMAGE_PIXELS): "
        "decoded with a warning, slowly; twice the limit is refused"
    )
    assert lines[i + 1 : i + 3] == ["  train/x/bigger.png: 40x40", "  val/y/biggest.png: 60x50"]


def test_check_csv_shares_the_folder_checks(tmp_path):
    """A multi-label CSV: a file listed in both splits (a leak), an unreadable file,
    a tiny image and a missing file, each reported once; counts per label."""
    from snugfit.data.check import check_csv

    root = make_multilabel_csv(tmp_path / "d", n=6)
    (root / "broken.png").write_bytes(b"not a png")
    Image.new("RGB", (40, 8)).save(root / "thin.png")
    rows = [
        "fname,labels,is_valid",
        "img_000.png,red green,0",
        "img_000.png,red,1",  # the same file in validation, with another label set
        "img_001.png,,0",  # no label at all
        "img_002.png,blue,0",
        "img_003.png,green,1",
        "broken.png,blue,0",
        "thin.png,red,0",
        "gone.png,green,1",
    ]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    report = check_csv(root, fn_col="fname", label_col="labels", valid_col="is_valid",
                       label_delim=" ", size=128, workers=1)  # fmt: skip
    assert report.multi_label and report.layout == "column" and report.classes == VOCAB
    assert report.files == 8 and report.images == {"train": 4, "valid": 2}
    assert report.counts == {"train": {"blue": 1, "green": 1, "red": 2},
                             "valid": {"blue": 0, "green": 1, "red": 1}}  # fmt: skip
    [bad] = report.unreadable
    assert bad.path == str(root / "broken.png") and bad.label == "blue"
    [missing] = report.missing
    assert missing.reason == "no such file (listed in labels.csv, line 9)"
    assert report.unreadable_files.keys() == {str(root / "broken.png"), str(root / "gone.png")}
    assert report.unusable == {"blue": 1, "green": 1, "red": 0}
    [dup] = report.duplicates
    assert dup.kinds == [LEAK, TWO_LABELS] and dup.labels == ["green red", "red"]
    assert [t.path for t in report.tiny] == [str(root / "thin.png")]
    assert "counts once under each of its labels" in report.table().caption


# -- one split, one pass: the loaders come from the check ---------------------------


def _no_header_pass(monkeypatch) -> list[Path]:
    """Make the loaders' header check fail, and count every image opened from now on."""
    import snugfit.data.usable

    def refuse(path):
        raise AssertionError(f"{path}: header opened again")

    monkeypatch.setattr(snugfit.data.usable, "header_problem", refuse)
    opened: list[Path] = []
    real_open = Image.open
    monkeypatch.setattr(
        Image, "open", lambda p, *a, **k: opened.append(Path(p)) or real_open(p, *a, **k)
    )
    return opened


def test_a_run_builds_its_loaders_from_the_check_without_reopening_headers(tmp_path, monkeypatch):
    from snugfit.app.config import TrainConfig
    from snugfit.app.dataset import check_data, loaders

    root = make_image_folder(tmp_path / "flat", n_train=9, n_valid=3, valid_name=None)
    broken = root / "red" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff")
    cfg = TrainConfig(str(root), valid_pct=0.25, seed=3, bs=4, size=32, num_workers=0)
    report = check_data(cfg)
    assert "split" not in report.to_dict()  # check.json is what the check found, as before
    expected = ImageDataLoaders.from_folder(
        root, valid_pct=0.25, seed=3, num_workers=0, cache=False, unreadable=report.unreadable_files
    )
    opened = _no_header_pass(monkeypatch)
    dls = loaders(cfg, report)
    assert opened == []
    assert dls.skipped == report.unreadable_files == {str(broken): "not an image"}
    assert (dls.train_items, dls.valid_items) == (expected.train_items, expected.valid_items)
    assert (dls.vocab, dls.seed, dls.bs, dls.size) == (expected.vocab, 3, 4, 32)
    x, y = dls.one_batch()
    assert x.shape == (4, 3, 32, 32) and y.dtype == torch.long


def test_from_check_skips_missing_and_unreadable_csv_rows_unopened(tmp_path, monkeypatch):
    from snugfit.data.check import check_csv

    root = make_multilabel_csv(tmp_path / "d", n=12)
    (root / "broken.png").write_bytes(b"not a png")
    rows = (root / "labels.csv").read_text().splitlines()
    rows += ["broken.png,blue", "gone.png,green red"]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    report = check_csv(root, label_delim=" ", valid_pct=0.25, seed=1, workers=1)
    opened = _no_header_pass(monkeypatch)
    dls = ImageDataLoaders.from_check(report, bs=4, size=32, num_workers=0, cache=False)
    assert opened == []
    assert dls.multi_label and dls.vocab == report.classes and dls.seed == 1
    assert dls.skipped == report.unreadable_files
    assert len(dls.skipped) == 2 and str(root / "gone.png") in dls.skipped
    used = {str(p) for p, _ in dls.train_items + dls.valid_items}
    assert len(used) == report.usable and not used & dls.skipped.keys()


def test_from_check_needs_the_split_items(tmp_path):
    root = make_image_folder(tmp_path / "d", n_train=3, n_valid=1)
    report = check_folder(root)
    report.split = None  # as a report read back from check.json would be
    with pytest.raises(SnugfitError, match="no split items"):
        ImageDataLoaders.from_check(report, num_workers=0)
