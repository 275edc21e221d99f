"""The segmentation task (masks, losses ignoring void, Dice/IoU over the whole set) and
evaluation that streams batch by batch for every task."""

import io
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from snugfit import Learner
from snugfit.errors import SnugfitError
from snugfit.infer.evaluate import evaluation
from snugfit.tasks import (
    VOID,
    ConcatEvaluator,
    MultiLabel,
    Segmentation,
    SingleLabel,
    confusion_matrix,
    task_from_config,
)
from snugfit.tasks.metrics import accuracy, error_rate

VOCAB = ["bg", "a", "b", "c"]  # "c" is in no mask and never predicted


def one_hot_logits(pred: torch.Tensor, n_classes: int = 4) -> torch.Tensor:
    """Logits ``(N, C, H, W)`` whose arg-max is ``pred``."""
    return F.one_hot(pred, n_classes).permute(0, 3, 1, 2).float() * 5


# Two batches of one 2x3 image; void pixels predicted as something, absent class 3.
TRUE1 = torch.tensor([[[0, 1, 1], [2, VOID, 0]]])
PRED1 = torch.tensor([[[0, 1, 0], [2, 1, 1]]])
TRUE2 = torch.tensor([[[1, 1, 1], [1, VOID, VOID]]])
PRED2 = torch.tensor([[[1, 1, 1], [1, 2, 0]]])


def seg_evaluator(task=None):
    task = task or Segmentation()
    metrics = [task.metric(m) for m in task.default_metrics]
    return task.evaluator(task.loss(), metrics, VOCAB)


def fed(ev, *batches):
    for pred, true in batches:
        ev.update(one_hot_logits(pred), true)
    return ev


# -- metrics ---------------------------------------------------------------------------
def test_metrics_match_a_hand_computation_with_void_and_an_absent_class():
    ev = fed(seg_evaluator(), (PRED1, TRUE1), (PRED2, TRUE2))
    # conf[true, pred] over the 9 non-void pixels (the 3 void ones count nowhere)
    assert ev.confusion().tolist() == [[1, 1, 0, 0], [1, 5, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    per_class = ev.per_class()
    # bg: tp 1, fp 1, fn 1; a: tp 5, fp 1, fn 1; b: tp 1; c: nowhere -> NaN
    assert per_class["dice"]["bg"] == pytest.approx(2 / 4)
    assert per_class["dice"]["a"] == pytest.approx(10 / 12)
    assert per_class["dice"]["b"] == 1.0 and math.isnan(per_class["dice"]["c"])
    assert per_class["iou"]["a"] == pytest.approx(5 / 7) and math.isnan(per_class["iou"]["c"])
    _, metrics = ev.result()
    # means over the non-background classes that have a score: a and b (c left out)
    assert metrics["dice"] == pytest.approx((10 / 12 + 1) / 2)
    assert metrics["iou"] == pytest.approx((5 / 7 + 1) / 2)
    assert metrics["pixel_accuracy"] == pytest.approx(7 / 9)


def test_metrics_accumulate_over_the_set_not_a_mean_of_batch_means():
    _, whole = fed(seg_evaluator(), (PRED1, TRUE1), (PRED2, TRUE2)).result()
    _, once = fed(seg_evaluator(), (torch.cat([PRED1, PRED2]), torch.cat([TRUE1, TRUE2]))).result()
    assert whole == once  # two batches counted = one batch of both
    _, first = fed(seg_evaluator(), (PRED1, TRUE1)).result()
    _, second = fed(seg_evaluator(), (PRED2, TRUE2)).result()
    for name in ("dice", "pixel_accuracy"):  # here the mean of batch means differs
        assert whole[name] != pytest.approx((first[name] + second[name]) / 2)
    assert first["dice"] == 0.75 and second["dice"] == 1.0  # 0.875 vs 11/12 over the set


def test_background_none_averages_every_class_and_nothing_to_score_is_nan():
    _, metrics = fed(seg_evaluator(Segmentation(background=None)), (PRED1, TRUE1)).result()
    assert metrics["dice"] == pytest.approx((0.5 + 0.5 + 1) / 3)  # bg, a, b; c has no score
    all_void = torch.full((1, 2, 3), VOID)
    loss, metrics = fed(seg_evaluator(), (PRED1, all_void)).result()
    assert loss == 0.0 and all(math.isnan(v) for v in metrics.values())


def test_mask_values_that_are_no_class_are_refused():
    with pytest.raises(SnugfitError, match="neither a class"):
        confusion_matrix(PRED1, torch.tensor([[[0, 1, 7], [2, VOID, 0]]]), 4)
    with pytest.raises(SnugfitError, match="differ in size"):
        confusion_matrix(PRED1, TRUE1[:, :1], 4)


# -- losses ---------------------------------------------------------------------------
def _logits_and_masks(seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 4, 5, 6, generator=g)
    masks = torch.randint(0, 4, (3, 5, 6), generator=g)
    masks[0, :2] = VOID  # images with different amounts of void
    masks[1, 0, :3] = VOID
    return logits, masks


@pytest.mark.parametrize("loss", ["ce", "dice_ce"])
def test_the_loss_ignores_void_pixels(loss):
    loss_func = Segmentation(loss).loss()
    logits, masks = _logits_and_masks()
    other = logits.clone()
    void = (masks == VOID).unsqueeze(1).expand_as(logits)
    other[void] = torch.randn(int(void.sum())) * 100
    assert loss_func(logits, masks) == loss_func(other, masks)
    changed = logits.clone()
    changed[~void] += torch.randn(int((~void).sum()))
    assert loss_func(changed, masks) != loss_func(logits, masks)


def test_cross_entropy_is_the_mean_over_images_of_each_image_s_non_void_mean():
    logits, masks = _logits_and_masks()
    per_image = [
        F.cross_entropy(logits[i : i + 1], masks[i : i + 1], ignore_index=VOID) for i in range(3)
    ]
    expected = torch.stack(per_image).mean()
    assert Segmentation().loss()(logits, masks) == pytest.approx(expected.item(), rel=1e-6)
    # so micro-batches weighted by their images give the batch's loss exactly
    loss_func = Segmentation("dice_ce").loss()
    whole = loss_func(logits, masks)
    parts = (loss_func(logits[:1], masks[:1]) * 1 + loss_func(logits[1:], masks[1:]) * 2) / 3
    assert whole.item() == pytest.approx(parts.item(), rel=1e-6)


def test_dice_ce_gradient_flows_and_skips_void_pixels():
    logits, masks = _logits_and_masks()
    logits.requires_grad_(True)
    Segmentation("dice_ce").loss()(logits, masks).backward()
    grad = logits.grad
    void = (masks == VOID).unsqueeze(1).expand_as(grad)
    assert torch.isfinite(grad).all() and grad[~void].abs().sum() > 0
    assert (grad[void] == 0).all()
    # the Dice part has a gradient of its own: dice_ce differs from ce in its gradient
    logits2 = logits.detach().clone().requires_grad_(True)
    Segmentation("ce").loss()(logits2, masks).backward()
    assert not torch.allclose(grad, logits2.grad)


def test_an_all_void_image_gives_a_finite_loss():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    masks = torch.full((2, 4, 4), VOID)
    masks[1, 0, 0] = 1
    for name in ("ce", "dice_ce"):
        loss = Segmentation(name).loss()(logits, masks)
        assert torch.isfinite(loss)
        loss.backward()
    assert torch.isfinite(logits.grad).all()


# -- streaming under torchrun: the sums of shards ------------------------------------------
def test_segmentation_sums_of_two_ranks_equal_one_process():
    whole = fed(seg_evaluator(), (PRED1, TRUE1), (PRED2, TRUE2))
    rank0, rank1, idle = (
        fed(seg_evaluator(), (PRED1, TRUE1)),
        fed(seg_evaluator(), (PRED2, TRUE2)),
        seg_evaluator(),
    )
    total = rank0.sums() + rank1.sums() + idle.sums()  # what the all-reduce adds up
    idle.load_sums(total)  # a rank that saw nothing ends with the whole set too
    loss, metrics = idle.result()
    assert idle.n == 2 and idle.confusion().equal(whole.confusion())
    assert metrics == whole.result()[1] and loss == pytest.approx(whole.result()[0], rel=1e-12)
    for name, values in whole.per_class().items():
        assert idle.per_class()[name] == pytest.approx(values, nan_ok=True)


@pytest.mark.parametrize("task", [SingleLabel(), MultiLabel(0.4)])
def test_classification_sums_of_two_ranks_equal_one_process(task):
    g = torch.Generator().manual_seed(1)
    outs = torch.randn(9, 3, generator=g)
    if task.multi_label:
        targs, names = (
            (torch.rand(9, 3, generator=g) > 0.5).float(),
            ("accuracy_multi", "f1_samples"),
        )
    else:
        targs, names = torch.randint(0, 3, (9,), generator=g), ("accuracy", "error_rate")
    metrics = [task.metric(m) for m in names]
    whole = task.evaluator(task.loss(), metrics, ["x", "y", "z"])
    whole.update(outs, targs)
    ranks = [task.evaluator(task.loss(), metrics, ["x", "y", "z"]) for _ in range(3)]
    ranks[0].update(outs[:4], targs[:4])
    ranks[1].update(outs[4:], targs[4:])  # ranks[2]: an empty shard
    ranks[2].load_sums(sum(r.sums() for r in ranks))
    loss, values = ranks[2].result()
    assert ranks[2].n == 9 and loss == pytest.approx(whole.result()[0], rel=1e-6)
    assert values == pytest.approx(whole.result()[1], rel=1e-6)


# -- evaluate() through a learner ---------------------------------------------------------
class TinyClassifier(nn.Module):
    def __init__(self, n_out=3):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.head = nn.Linear(4, n_out)

    def get_classifier(self):
        return self.head

    def forward(self, x):
        return self.head(self.body(x))


class TinySegNet(nn.Module):
    def __init__(self, n_classes=4):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Conv2d(8, n_classes, 1)

    def get_classifier(self):
        return self.head

    def forward(self, x):
        return self.head(self.body(x))


def fake_dls(task, make_target, n_batches=3, bs=4, size=8, vocab=("x", "y", "z")):
    g = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(bs, 3, size, size, generator=g), make_target(bs, g)) for _ in range(n_batches)
    ]
    return SimpleNamespace(
        train=batches, valid=batches[1:], bs=bs, device=torch.device("cpu"), task=task,
        vocab=list(vocab), c=len(vocab), size=size, crop_pct=1.0, mean=(0.5,) * 3, std=(0.5,) * 3,
    )  # fmt: skip


def learner(dls, model, metrics):
    torch.manual_seed(0)
    quiet = Console(file=io.StringIO(), force_terminal=False)
    return Learner(dls, model, metrics=metrics, precision="fp32", console=quiet)


def _class_indices(bs, g):
    return torch.randint(0, 3, (bs,), generator=g)


def _multi_hot(bs, g):
    return (torch.rand(bs, 3, generator=g) > 0.5).float()


@pytest.mark.parametrize(
    "task, make_target, names",
    [
        (SingleLabel(), _class_indices, ["accuracy", "error_rate"]),
        (MultiLabel(), _multi_hot, ["accuracy_multi", "f1_samples"]),
    ],
)
def test_classification_evaluation_gives_the_numbers_of_the_whole_concatenation(
    task, make_target, names
):
    learn = learner(fake_dls(task, make_target), TinyClassifier(), names)
    loss, metrics = learn.evaluate(learn.dls.valid)
    preds, targs = learn.get_preds(learn.dls.valid)  # what evaluate computed on before
    assert loss == learn.loss_func(preds, targs).item()  # bit for bit
    assert metrics == {n: m(preds, targs).item() for n, m in zip(names, learn.metrics, strict=True)}


def _masks(bs, g):
    masks = torch.randint(0, 3, (bs, 8, 8), generator=g)  # class 3 ("c") in no mask
    masks[:, :2, :2] = VOID
    return masks


def test_a_learner_trains_and_evaluates_segmentation_in_a_stream():
    dls = fake_dls(Segmentation("dice_ce"), _masks, vocab=VOCAB)
    learn = learner(dls, TinySegNet(), list(Segmentation.default_metrics))
    learn.fit(1, lr=1e-2)
    row = learn.recorder.rows[-1]
    assert set(row) >= {"train_loss", "valid_loss", "dice", "iou", "pixel_accuracy"}
    assert math.isfinite(row["valid_loss"]) and 0 <= row["dice"] <= 1
    # two validation batches streamed = one batch of both images
    both = [(torch.cat([x for x, _ in dls.valid]), torch.cat([y for _, y in dls.valid]))]
    streamed, whole = learn.evaluate(dls.valid), learn.evaluate(both)
    assert streamed[1] == whole[1] and streamed[0] == pytest.approx(whole[0], rel=1e-6)
    per_class = evaluation(learn, dls.valid).per_class()
    assert math.isnan(per_class["dice"]["c"]) and not math.isnan(per_class["dice"]["a"])


def test_an_empty_validation_set_is_one_clear_line():
    learn = learner(fake_dls(SingleLabel(), _class_indices), TinyClassifier(), ["accuracy"])
    with pytest.raises(SnugfitError, match="yielded no images"):
        learn.evaluate([])


# -- the task's other duties ----------------------------------------------------------
def test_masks_become_targets_batches_and_titles():
    task = Segmentation()
    mask = np.array([[1, 1, 2], [VOID, 1, 0]], dtype=np.uint8)
    assert task.target(mask, 4).dtype == np.uint8
    assert task.target(mask.astype(np.int64), 4).dtype == np.uint8  # cast when in range
    with pytest.raises(SnugfitError, match=r"\(H, W\)"):
        task.target(mask[None], 4)
    with pytest.raises(SnugfitError, match="0 to 255"):
        task.target(np.array([[300]]), 4)
    batch = task.stack_targets([mask, torch.from_numpy(mask)])
    assert batch.dtype == torch.long and batch.shape == (2, 2, 3) and batch[0, 1, 0] == VOID
    with pytest.raises(SnugfitError, match="different sizes"):
        task.stack_targets([mask, mask[:, :2]])
    empty = task.empty_targets(4, torch.device("cpu"))
    assert empty.shape == (0, 0, 0) and empty.dtype == torch.long
    assert task.title(mask, VOCAB) == "a, bg, b"  # by pixel share (ties: class order), no void
    assert task.title(np.array([[0, 1], [2, 3]], dtype=np.uint8), VOCAB) == "bg, a, b +1"
    assert task.title(np.full((2, 2), VOID, dtype=np.uint8), VOCAB) == "(void)"


def test_predictions_decode_to_masks_and_pixel_shares():
    task = Segmentation()
    probs = task.activation(one_hot_logits(torch.cat([PRED1, PRED2])))
    assert probs.shape == (2, 4, 2, 3) and torch.allclose(probs.sum(1), torch.ones(2, 2, 3))
    masks = task.labels(probs, VOCAB)
    assert len(masks) == 2 and masks[0].tolist() == PRED1[0].tolist()
    assert task.csv_cells(probs[0], VOCAB) == ("a", pytest.approx(3 / 6))
    assert task.csv_values(probs[0]) == pytest.approx([2 / 6, 3 / 6, 1 / 6, 0])
    assert task.line("img.png", masks[0], probs[0]) == "img.png\t2x3\t0.3333 0.5000 0.1667 0.0000"


def test_metric_names_are_checked_against_the_task():
    task = Segmentation(background=2)
    assert task.metric("dice").keywords == {"background": 2}
    with pytest.raises(SnugfitError, match="'accuracy' is a classification metric"):
        task.metric("accuracy")
    with pytest.raises(SnugfitError, match="unknown metric 'f2'"):
        task.metric("f2")
    with pytest.raises(SnugfitError, match="'dice' needs segmentation data"):
        SingleLabel().metric("dice")
    with pytest.raises(SnugfitError, match="class 2 is not one of the 2"):
        task.evaluator(task.loss(), [], ["bg", "a"])
    with pytest.raises(SnugfitError, match="unknown segmentation loss"):
        Segmentation("focal")
    assert not task.imagenet_head and task.classes_word == "classes (segmentation)"


def test_a_saved_segmentation_task_comes_back_and_old_files_still_read():
    for task in (Segmentation(), Segmentation("dice_ce", background=None)):
        cfg = json.loads(json.dumps(task.config()))
        assert cfg["task"] == "segmentation"
        back = task_from_config({"vocab": VOCAB, **cfg})
        assert isinstance(back, Segmentation) and back.config() == task.config()
    # classification files written before there was a "task" field
    assert isinstance(task_from_config({"vocab": VOCAB, "multi_label": False}), SingleLabel)
    assert task_from_config({"multi_label": True, "threshold": 0.3}).threshold == 0.3
    bad = [
        ({"task": "detection"}, "field 'task'"),
        ({"task": "segmentation", "loss": "l1"}, "field 'loss'"),
        ({"task": "segmentation", "background": 4, "vocab": VOCAB}, "field 'background'"),
        ({"task": "segmentation", "background": True}, "field 'background'"),
    ]
    for cfg, message in bad:
        with pytest.raises(SnugfitError, match=message):
            task_from_config(cfg, "m.json")


def test_concat_evaluator_measures_with_the_metrics_it_is_given():
    ev = ConcatEvaluator(nn.CrossEntropyLoss(), [accuracy, error_rate])
    ev.update(torch.tensor([[2.0, 0.0]]), torch.tensor([0]))
    ev.update(torch.tensor([[0.0, 2.0]]), torch.tensor([0]))
    loss, metrics = ev.result()
    assert metrics == {"accuracy": 0.5, "error_rate": 0.5} and ev.n == 2
    logits, targets = torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 0])
    assert loss == nn.CrossEntropyLoss()(logits, targets).item()
