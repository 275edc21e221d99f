"""Batch prediction: `snugfit predict --csv`, its batch size (given, or fitted to a
memory budget) and its report of unreadable files."""

import csv
import shutil
from types import SimpleNamespace

import pytest
import torch

from snugfit import memory
from snugfit.errors import SnugfitError
from snugfit.infer.predict import CPU_BS, MAX_BS, predict_batch_size, predict_to_csv
from snugfit.memory import MiB, eval_batch_size, forward_peak_bytes, profile_eval
from snugfit.models import create_model
from snugfit.train.factory import load_learner
from test_cli import run_cli
from test_train import colour_learner


@pytest.fixture
def saved(image_folder, tmp_path):
    """A colour learner (untrained: deterministic, and its classes are far from ties)
    saved to ``tmp_path/model``, and its validation files."""
    learn = colour_learner(image_folder)
    learn.save(tmp_path / "model")
    return tmp_path / "model", sorted(str(p) for p, _ in learn.dls.valid_items)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_csv_matches_predict_and_reports_unreadable(saved, image_folder, tmp_path, capsys):
    model, files = saved
    bad = image_folder / "val" / "red" / "broken.jpg"
    bad.write_text("not a jpeg")
    out = tmp_path / "out.csv"
    args = ("predict", str(model), str(image_folder / "val"), "--csv", str(out), "--bs", "3")
    code, stdout, err = run_cli(capsys, *args, "--device", "cpu")
    assert code == 1  # a file was skipped
    rows = read_csv(out)
    assert list(rows[0]) == [
        "path", "label", "probability", "prob_green", "prob_red", "error",
    ]  # fmt: skip
    assert sorted(r["path"] for r in rows) == sorted([*files, str(bad)])
    learn = load_learner(model)
    for r in rows:
        if r["path"] == str(bad):
            assert r["label"] == "" and r["probability"] == "" and r["error"] == "not an image"
            continue
        label, probs = learn.predict(r["path"])
        assert r["label"] == label and r["error"] == ""
        got = torch.tensor([float(r["prob_green"]), float(r["prob_red"])])
        assert torch.allclose(got, probs, atol=1e-5)
        assert abs(got.sum().item() - 1) < 1e-5
        assert r["probability"] == r[f"prob_{label}"]
    assert stdout.strip() == f"predicted 8 of 9 images, 1 unreadable (rows with an error): {out}"
    assert f"snugfit: skipping {bad}: not an image" in err and "batch 3 (--bs)" in err


def test_all_readable_exits_0_and_keeps_the_order_given(saved, tmp_path, capsys):
    model, files = saved
    out = tmp_path / "out.csv"
    given = files[::-1]
    code, _, err = run_cli(capsys, "predict", str(model), *given, "--csv", str(out))
    assert code == 0, err
    assert [r["path"] for r in read_csv(out)] == given


def test_missing_file_is_a_row_and_an_empty_folder_an_error(saved, tmp_path, capsys):
    model, files = saved
    out = tmp_path / "out.csv"
    missing = str(tmp_path / "gone.jpg")
    code, _, _ = run_cli(capsys, "predict", str(model), files[0], missing, "--csv", str(out))
    rows = read_csv(out)
    assert code == 1 and [r["error"] for r in rows] == ["", "no such file"]
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "predict", str(model), str(tmp_path / "empty"), "--csv", "x")
    assert code == 2 and "no image files" in err


def test_without_csv_prints_one_line_per_image_of_a_folder(saved, image_folder, capsys):
    model, files = saved
    code, stdout, err = run_cli(capsys, "predict", str(model), str(image_folder / "val"))
    assert code == 0, err
    lines = [line.split("\t") for line in stdout.strip().splitlines()]
    assert [p for p, _, _ in lines] == files
    assert all(label in ("red", "green") and 0.5 <= float(p) <= 1 for _, label, p in lines)


def test_bs_sets_the_forward_batches(saved, image_folder, tmp_path):
    learn = load_learner(saved[0])
    sizes = []
    learn.model.register_forward_pre_hook(lambda m, args: sizes.append(len(args[0])))
    summary = predict_to_csv(learn, [image_folder / "val"], tmp_path / "o.csv", bs=3)
    assert sizes == [3, 3, 2] and summary.bs == 3 and summary.n_predicted == 8


def test_out_of_memory_halves_the_chunks(saved, image_folder, tmp_path):
    learn = load_learner(saved[0])
    sizes = []

    def small_device(module, args):
        if len(args[0]) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. (injected)")
        sizes.append(len(args[0]))

    learn.model.register_forward_pre_hook(small_device)
    predict_to_csv(learn, [image_folder / "val"], tmp_path / "o.csv", bs=8)
    assert learn.eval_bs == 2 and sum(sizes) == 8 and max(sizes) == 2
    rows = read_csv(tmp_path / "o.csv")
    assert all(r["label"] in ("red", "green") for r in rows)


def test_forward_peak_is_linear_in_the_batch():
    torch.manual_seed(0)
    model = create_model("test_resnet", 2, pretrained=False)
    prof = profile_eval(model, 64)
    assert prof.per_sample > 0
    measured = forward_peak_bytes(model, torch.randn(6, 3, 64, 64))
    assert measured == pytest.approx(prof.fixed + 6 * prof.per_sample, rel=0.1)


def test_eval_batch_size_fits_the_budget():
    prof = memory.ActivationProfile(fixed=0, per_sample=10 * MiB)
    sizes = [eval_batch_size(100 * MiB, prof, 224, budget=b * 2**30) for b in (1, 2, 4)]
    assert sizes[0] < sizes[1] < sizes[2] <= MAX_BS

    def peak(n):  # static + activations with their 15% margin + input + 64 MiB
        return 100 * MiB + 1.15 * 10 * MiB * n + n * 3 * 224 * 224 * 5 + 64 * MiB

    assert peak(sizes[1]) <= 2 * 2**30 < peak(sizes[1] + 1)
    assert eval_batch_size(100 * MiB, prof, 224, budget=50 * MiB) == 1  # the OOM fallback decides
    assert eval_batch_size(0, prof, 224, budget=2**40, max_bs=64) == 64


def test_batch_from_budget_on_cpu_and_default(saved):
    learn = load_learner(saved[0])
    assert predict_batch_size(learn)[0] == CPU_BS
    small, why = predict_batch_size(learn, "80MB")
    large, _ = predict_batch_size(learn, "120MB")
    assert 1 <= small < large <= MAX_BS and "fits" in why


def test_batch_from_budget_on_cuda(saved, monkeypatch):
    """CUDA faked: the whole card by default, a fraction of it, and the context reserved."""
    learn = load_learner(saved[0])
    total = 2**30
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda d: SimpleNamespace(total_memory=total)
    )
    real_profile = memory.profile_eval

    def probe_on_cpu(*args, **kwargs):
        return real_profile(*args, **{**kwargs, "device": "cpu"})

    monkeypatch.setattr(memory, "profile_eval", probe_on_cpu)
    learn.device = torch.device("cuda")
    whole, why = predict_batch_size(learn)
    half, _ = predict_batch_size(learn, 0.5)
    assert half < whole and "1.00 GiB" in why
    # 512 MiB of a 1 GiB card is the CUDA context: a half-card budget fits less than
    # the same bytes on the CPU
    learn.device = torch.device("cpu")
    assert predict_batch_size(learn, total // 2)[0] > half


def test_predict_takes_the_run_folder_of_train(saved, image_folder, tmp_path, capsys):
    """``snugfit predict RUN`` (train's --out) predicts with RUN/model, as with the model."""
    from snugfit.app.run_folder import RunFolder

    model, files = saved
    run = tmp_path / "run"
    shutil.copytree(model, RunFolder(run).model)
    code, by_model, err = run_cli(capsys, "predict", str(model), *files[:3])
    assert code == 0, err
    code, by_run, err = run_cli(capsys, "predict", str(run), *files[:3])
    assert code == 0, err
    assert by_run == by_model and len(by_run.splitlines()) == 3
    assert load_learner(run).vocab == ["green", "red"]
    # neither a model folder nor a run folder: one line saying what is expected
    code, _, err = run_cli(capsys, "predict", str(tmp_path / "nothing"), files[0])
    assert code == 2 and err.strip() == (
        f"snugfit: error: {tmp_path / 'nothing' / 'snugfit.json'}: not found; expected a folder "
        "written by learn.save(), or the --out folder of snugfit train (with model/snugfit.json)"
    )


def test_nothing_to_predict():
    from snugfit.infer.predict import image_inputs

    with pytest.raises(SnugfitError, match="nothing to predict"):
        image_inputs([])


def test_multi_label_rows_list_the_classes_above_the_threshold(image_folder, tmp_path):
    from snugfit.train.learner import Learner

    torch.manual_seed(0)
    infer = {"vocab": ["green", "red"], "size": 32, "crop_pct": 0.875}
    infer.update(mean=[0.5] * 3, std=[0.25] * 3, multi_label=True, threshold=0.5)
    model = create_model("test_efficientnet", 2, pretrained=False)
    learn = Learner(None, model, arch="test_efficientnet", infer=infer, precision="fp32")
    predict_to_csv(learn, [image_folder / "val"], tmp_path / "o.csv", bs=4)
    for r in read_csv(tmp_path / "o.csv"):
        labels, probs = learn.predict(r["path"])
        assert r["label"] == " ".join(labels)
        got = torch.tensor([float(r["prob_green"]), float(r["prob_red"])])
        assert torch.allclose(got, probs, atol=1e-5)  # sigmoids: no need to sum to 1


def test_printed_lines_match_predict_in_the_order_given(saved, image_folder, capsys, monkeypatch):
    """Without --csv the lines come from batches (here of 3), each as `predict` gives it."""
    import snugfit.train.factory as factory

    model, files = saved
    bad = image_folder / "val" / "red" / "broken.jpg"
    bad.write_text("not a jpeg")
    given = [*files[::-1][:4], str(bad), *files[::-1][4:]]
    batches, load = [], factory.load_learner

    def counted(*args, **kwargs):
        learn = load(*args, **kwargs)
        learn.model.register_forward_hook(lambda m, x, y: batches.append(len(x[0])))
        return learn

    monkeypatch.setattr(factory, "load_learner", counted)
    code, stdout, err = run_cli(capsys, "predict", str(model), *given, "--bs", "3")
    assert batches == [3, 2, 3]  # the unreadable file leaves its batch one short
    monkeypatch.undo()
    assert code == 1 and err.strip().splitlines()[-1] == f"snugfit: skipping {bad}: not an image"
    lines = [line.split("\t") for line in stdout.strip().splitlines()]
    assert [p for p, _, _ in lines] == [f for f in given if f != str(bad)]
    learn = load_learner(model)
    for path, label, conf in lines:
        want_label, probs = learn.predict(path)
        assert label == want_label and abs(float(conf) - probs.max().item()) < 1e-4


def test_many_batches_run_on_the_folded_copy_with_the_same_probabilities(
    saved, tmp_path, capsys, monkeypatch
):
    """From FOLD_BATCHES batches on, BatchNorm is folded into the convolutions first
    (`Learner.inference_net`); the CSV still matches `predict`, image by image."""
    from snugfit.infer import predict as predict_module
    from snugfit.train.learner import Learner

    model, files = saved
    nets, real = [], Learner.inference_net

    def spy(self, example):
        nets.append((real(self, example), self.model))
        return nets[-1][0]

    monkeypatch.setattr(Learner, "inference_net", spy)
    out = tmp_path / "out.csv"
    bs = 2
    assert -(-len(files) // bs) >= predict_module.FOLD_BATCHES
    code, _, err = run_cli(
        capsys, "predict", str(model), *files, "--csv", str(out), "--bs", str(bs)
    )
    assert code == 0, err
    assert len(nets) == 1 and nets[0][0] is not nets[0][1]  # folded once, a copy
    learn = load_learner(model)
    for r in read_csv(out):
        _, probs = learn.predict(r["path"])
        got = torch.tensor([float(r["prob_green"]), float(r["prob_red"])])
        assert torch.allclose(got, probs, atol=1e-5)


def test_rle_output_is_for_segmentation_models_only(saved, capsys):
    model, files = saved
    code, _, err = run_cli(capsys, "predict", str(model), files[0], "--rle", "x.csv")
    assert code == 2
    assert "--rle: masks at full resolution, for segmentation models; this model is a " in err
