"""EMA of the weights: the decay rule, the average against one computed by hand,
validation and the kept weights, checkpoints and exact resume, the command line."""

import pytest
import torch

from snugfit import EMA
from snugfit.callbacks import Callback, SaveCheckpoint
from snugfit.callbacks.ema import check_decay, ema_decay
from snugfit.errors import NonFiniteLoss, SnugfitError
from test_learner import make_learner, snapshot
from test_nonfinite import PoisonLoss, Witness
from test_resume import StopAt
from test_resume import learner as resume_learner


class StepWeights(Callback):
    """The model's state when the fit starts and after every optimizer step, and
    the batches' input shapes."""

    def __init__(self):
        self.start, self.steps, self.shapes = None, [], []

    def before_fit(self, learn):
        self.start = snapshot(learn.model)

    def before_batch(self, learn):
        self.shapes.append(tuple(learn.xb.shape))

    def after_step(self, learn):
        self.steps.append(snapshot(learn.model))


def hand_ema(start, steps, decay, warmup=True, upto=None):
    """``ema = d * ema + (1 - d) * w`` in float64, over the float tensors; the
    integer buffers are the last step's (copied, as timm does)."""
    steps = steps[:upto]
    ema = {k: v.double() for k, v in start.items() if v.is_floating_point()}
    for t, w in enumerate(steps):
        d = min(decay, (1 + t) / (10 + t)) if warmup else decay
        for k in ema:
            ema[k] = d * ema[k] + (1 - d) * w[k].double()
    last = steps[-1] if steps else start
    return {k: ema[k].float() if k in ema else last[k] for k in start}


def assert_close(state, expected, atol=1e-6):
    assert state.keys() == expected.keys()
    for k in state:
        if state[k].is_floating_point():
            assert torch.allclose(state[k].double(), expected[k].double(), atol=atol), k
        else:
            assert torch.equal(state[k], expected[k]), k


def assert_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# -- the decay rule ------------------------------------------------------------
def test_decay_rule_warms_up_then_holds():
    # min(decay, (1 + t) / (10 + t)), t = the updates made before this one
    assert [ema_decay(0.999, t) for t in range(4)] == pytest.approx(
        [1 / 10, 2 / 11, 3 / 12, 4 / 13]
    )
    assert ema_decay(0.999, 90) == pytest.approx(91 / 100)
    assert ema_decay(0.999, 8990) == pytest.approx(8991 / 9000)  # still below 0.999
    assert ema_decay(0.999, 8991) == 0.999  # 8992 / 9001 > 0.999
    assert ema_decay(0.5, 7) == pytest.approx(8 / 17) and ema_decay(0.5, 8) == 0.5
    assert [ema_decay(0.9, t, warmup=False) for t in (0, 1, 10**6)] == [0.9, 0.9, 0.9]


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, True, "0.99", None, float("nan")])
def test_a_decay_outside_zero_one_is_one_line(bad):
    with pytest.raises(SnugfitError) as e:
        EMA(bad)
    assert str(e.value) == (
        f"decay: expected a decay between 0 and 1 (exclusive), e.g. 0.999, got {bad!r}"
    )
    with pytest.raises(SnugfitError, match=r"^ema: expected a decay"):
        check_decay("ema", bad)


# -- the average ---------------------------------------------------------------
@pytest.mark.parametrize("decay, warmup", [(0.999, True), (0.6, False)])
def test_the_average_is_the_hand_computed_one_and_the_model_keeps_it(decay, warmup):
    learn = make_learner(bn_freeze_below=0)  # BN layers train: their statistics move
    learn.unfreeze()
    steps = StepWeights()
    learn.fit(2, lr=1e-2, cbs=[steps, EMA(decay, warmup=warmup)])
    assert len(steps.steps) == 6  # 2 epochs of 3 batches
    expected = hand_ema(steps.start, steps.steps, decay, warmup)
    assert_close(snapshot(learn.model), expected)
    raw = steps.steps[-1]
    # averaged, not the last weights; BN statistics too, its step counter copied
    assert not torch.allclose(expected["fc.weight"], raw["fc.weight"], atol=1e-4)
    bn = [k for k in raw if k.endswith("running_mean")]
    assert bn and not torch.allclose(expected[bn[0]], raw[bn[0]], atol=1e-5)
    counter = bn[0].replace("running_mean", "num_batches_tracked")
    assert learn.model.state_dict()[counter] == raw[counter] == 6
    # nothing left for a later fit, nothing else clobbered
    assert not learn.recipe_tensors and "ema_updates" not in learn.recipe_state


def test_training_goes_on_from_the_raw_weights_and_validates_the_average():
    learn = make_learner(bn_freeze_below=0)
    learn.unfreeze()
    steps = StepWeights()

    class AtEpochStart(Callback):
        def __init__(self):
            self.weights = []

        def before_train(self, learn):
            self.weights.append(snapshot(learn.model))

    start = AtEpochStart()
    learn.fit(2, lr=1e-2, cbs=[steps, start, EMA(0.999)])
    # epoch 1 trained on from the raw weights of epoch 0's last step
    assert_equal(start.weights[1], steps.steps[2])
    rows = learn.recorder.rows
    for epoch, upto in ((0, 3), (1, 6)):
        learn.model.load_state_dict(hand_ema(steps.start, steps.steps, 0.999, upto=upto))
        assert rows[epoch]["valid_loss"] == pytest.approx(learn.validate()["valid_loss"], abs=1e-5)
        learn.model.load_state_dict(steps.steps[upto - 1])
        raw_loss = learn.validate()["valid_loss"]
        assert abs(rows[epoch]["valid_loss"] - raw_loss) > 1e-4, "the raw weights' loss differs"


def test_callbacks_before_it_see_the_validated_weights_checkpoints_the_raw_ones(tmp_path):
    """EarlyStopping/SaveBest-like callbacks (order 70) see the average; SaveCheckpoint
    (order 90) writes the training weights and the average next to them."""
    learn = make_learner()
    learn.unfreeze()
    steps = StepWeights()

    class Seen(Callback):
        def __init__(self, order):
            self.order, self.weights = order, []

        def after_epoch(self, learn):
            self.weights.append(snapshot(learn.model))

    judge, writer = Seen(70), Seen(95)
    learn.fit(2, lr=1e-2, cbs=[steps, judge, writer, EMA(0.999)])
    assert_close(judge.weights[0], hand_ema(steps.start, steps.steps, 0.999, upto=3))
    assert_equal(writer.weights[0], steps.steps[2])  # mid-fit: the raw weights are back
    assert_equal(writer.weights[1], judge.weights[1])  # the last epoch: the average is kept


def test_early_stopping_keeps_the_average_of_the_epoch_it_stops_at():
    from snugfit.callbacks import EarlyStopping

    learn = make_learner()
    learn.unfreeze()
    steps = StepWeights()
    # min_delta so large that epoch 1 cannot improve: stop after epoch 1 of 5
    learn.fit(5, lr=1e-2, cbs=[steps, EarlyStopping(min_delta=1e9), EMA(0.999)])
    assert len(steps.steps) == 6
    assert_close(snapshot(learn.model), hand_ema(steps.start, steps.steps, 0.999))
    assert learn.events.of("ema")[-1]["kept"] is True


def test_frozen_body_is_not_copied_and_each_fit_averages_its_own_steps():
    learn = make_learner()  # bn_freeze_below=16 > bs 8: BN statistics stay
    learn.freeze()
    ema, steps = EMA(0.9), StepWeights()

    class Sizes(Callback):
        def __init__(self):
            self.sizes = []

        def before_batch(self, learn):
            self.sizes.append(len(ema.ema))

    sizes = Sizes()
    learn.fit(1, lr=1e-2, cbs=[steps, ema, sizes])
    trainable = [k for k, p in learn.model.named_parameters() if p.requires_grad]
    buffers = [k for k, b in learn.model.named_buffers() if b.is_floating_point()]
    assert sizes.sizes[0] == len(trainable) + len(buffers)
    assert_close(snapshot(learn.model), hand_ema(steps.start, steps.steps, 0.9))
    # a second fit starts a new average from the weights it starts with
    learn.unfreeze()
    second = StepWeights()
    learn.fit(1, lr=1e-2, cbs=[second, ema])
    assert_close(second.start, hand_ema(steps.start, steps.steps, 0.9))
    assert_close(snapshot(learn.model), hand_ema(second.start, second.steps, 0.9))


def test_lr_find_steps_are_not_averaged():
    learn = make_learner()
    ema = EMA(0.9)
    learn.cbs.append(ema)  # for the learner's whole life, as Learner(cbs=[...])
    learn.lr_find(num_it=5)
    assert ema.ema is None and "ema_updates" not in learn.recipe_state
    steps = StepWeights()
    learn.fit(1, lr=1e-2, cbs=[steps])
    assert_close(snapshot(learn.model), hand_ema(steps.start, steps.steps, 0.9))


def test_a_nonfinite_loss_leaves_the_last_good_raw_weights():
    learn = make_learner()
    learn.unfreeze()
    witness = Witness()  # order 95: the weights training goes on from
    with pytest.raises(NonFiniteLoss):
        learn.fit(3, lr=1e-2, cbs=[PoisonLoss([4]), witness, EMA(0.9)])
    state = snapshot(learn.model)
    assert_equal(state, witness.epoch_weights[0])  # the guard's, not the (NaN) average
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert "ema_updates" not in learn.recipe_state and not learn.recipe_tensors
    assert learn.events.of("ema")[-1]["kept"] is False


# -- checkpoints and resume ----------------------------------------------------
def test_the_checkpoint_carries_the_average_and_its_count(tmp_path):
    from snugfit.saving.checkpoint import read_checkpoint

    ckpt = tmp_path / "c.safetensors"
    learn = make_learner()
    learn.unfreeze()
    steps = StepWeights()
    with pytest.raises(KeyboardInterrupt):
        learn.fit(2, lr=1e-2, cbs=[steps, SaveCheckpoint(ckpt, every_batches=1),
                                   StopAt(0, 1, 0), EMA(0.9)])  # fmt: skip
    tensors, meta = read_checkpoint(ckpt)
    # StopAt (order 0) raised before SaveCheckpoint saved step 4: the last file is epoch 0's
    assert len(steps.steps) == 4 and meta["position"] == {"fit_index": 0, "epoch": 1, "iter": 0}
    assert meta["recipe_state"]["ema_updates"] == 3
    expected = hand_ema(steps.start, steps.steps, 0.9, upto=3)
    ema = {k[len("recipe.ema.") :]: v for k, v in tensors.items() if k.startswith("recipe.ema.")}
    assert ema and all(torch.allclose(v, expected[k], atol=1e-6) for k, v in ema.items())
    # the interrupted learner keeps its raw weights; its checkpoint state is cleared
    assert_equal(snapshot(learn.model), steps.steps[-1])
    assert "ema_updates" not in learn.recipe_state


@pytest.mark.parametrize(
    "stop, every",
    [
        ((0, 0, 2), 1),
        ((0, 0, 3), 1),
        ((1, 1, 1), 1),
        ((1, 0, 3), 1),
        ((1, 1, 0), None),
        ((1, 0, 1), None),
    ],
    ids=["frozen", "head-last-batch", "mid", "epoch-last-batch", "epoch-end", "head-fit-end"],
)
def test_resume_gives_the_uninterrupted_weights_bit_for_bit(tmp_path, stop, every):
    ref = resume_learner()
    ref.fine_tune(2, freeze_epochs=1, cbs=[EMA(0.9)])

    ckpt = tmp_path / "ckpt.safetensors"
    stopped = resume_learner()
    with pytest.raises(KeyboardInterrupt):
        stopped.fine_tune(2, freeze_epochs=1, cbs=[SaveCheckpoint(ckpt, every_batches=every),
                                                   StopAt(*stop), EMA(0.9)])  # fmt: skip
    torch.manual_seed(123)
    resumed = resume_learner()
    resumed.fine_tune(2, freeze_epochs=1, cbs=[EMA(0.9)], resume=ckpt)
    assert_equal(snapshot(ref.model), snapshot(resumed.model))
    for r1, r2 in zip(ref.recorder.rows, resumed.recorder.rows, strict=True):
        assert r1["valid_loss"] == r2["valid_loss"]
    assert "ema_updates" not in resumed.recipe_state and not resumed.recipe_tensors


def test_a_checkpoint_averaging_other_weights_is_refused(tmp_path):
    learn = make_learner()
    learn.recipe_state["ema_updates"] = 3
    learn.recipe_tensors["ema.no.such.weight"] = torch.zeros(2)
    with pytest.raises(SnugfitError, match=r"^EMA: the checkpoint averages weights this model "
                                           r"does not have: no\.such\.weight"):  # fmt: skip
        learn.fit(1, cbs=[EMA()])


# -- with auto_fit and precomputed features ------------------------------------
def test_auto_fit_compares_and_keeps_averaged_weights(image_folder):
    """auto_fit's best-phase weights (recipe_tensors "best.*") live next to the
    average's ("ema.*"): neither clobbers the other."""
    from snugfit import ImageDataLoaders, vision_learner

    torch.manual_seed(0)
    dls = ImageDataLoaders.from_folder(image_folder, bs=4, size=32, num_workers=0, seed=3)
    learn = vision_learner(dls, "test_efficientnet", pretrained=False, precision="fp32",
                           console=quiet())  # fmt: skip
    steps = StepWeights()

    class Keys(Callback):
        order = 95

        def __init__(self):
            self.seen = []

        def after_batch(self, learn):
            self.seen.append(sorted({k.split(".")[0] for k in learn.recipe_tensors}))

    keys = Keys()
    learn.auto_fit(1, head_epochs=1, head_aug_epochs=1, lr_find=False, stop_if_no_gain=False,
                   cbs=[steps, keys, EMA(0.9)])  # fmt: skip
    assert keys.seen and all(s == ["best", "ema"] for s in keys.seen)
    assert not learn.recipe_tensors and "ema_updates" not in learn.recipe_state
    # the head on precomputed features: 2-D inputs, and the head's weights were averaged
    assert len(steps.shapes[0]) == 2
    kept = learn.recipe_state["best_phase"]
    rows = learn.recorder.rows
    phase_rows = {"start": None, "head": rows[0], "head with augmentation": rows[1],
                  "unfrozen": rows[-1]}  # fmt: skip
    assert kept != "start", "training improved on the start (seeded)"
    # the kept weights are that phase's average, whose validation loss was recorded
    assert learn.validate()["valid_loss"] == pytest.approx(phase_rows[kept]["valid_loss"], abs=1e-5)


def quiet():
    from test_learner import quiet as q

    return q()


# -- the command line ------------------------------------------------------------
def test_ema_flag_maps_onto_the_config_and_adds_the_callback(image_folder, monkeypatch):
    from snugfit.app import run
    from snugfit.app.cli import build_parser

    args = build_parser().parse_args(["train", str(image_folder), "--ema", "0.99"])
    assert args.ema == 0.99
    assert build_parser().parse_args(["train", str(image_folder)]).ema is None

    seen = {}

    def fake_fit(learn, cfg, cbs):
        seen["cbs"] = cbs

    monkeypatch.setattr(run, "_fit", fake_fit)
    monkeypatch.setattr(run.Learner, "save", lambda self, path: path)
    from snugfit import TrainConfig

    cfg = TrainConfig(str(image_folder), arch="test_efficientnet", pretrained=False, bs=8,
                      size=32, num_workers=0, ema=0.99, out=str(image_folder.parent / "run"))  # fmt: skip
    run.train(cfg, console=quiet())
    ema = [cb for cb in seen["cbs"] if isinstance(cb, EMA)]
    assert len(ema) == 1 and ema[0].decay == 0.99 and ema[0].warmup


@pytest.mark.parametrize("value", ["1.5", "0", "1", "-0.5", "x"])
def test_bad_ema_flag_is_one_line(image_folder, capsys, value):
    from snugfit.app.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", str(image_folder), "--ema", value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err == (
        f"snugfit: error: argument --ema: must be between 0 and 1, got {value!r} "
        "(see snugfit train --help)\n"
    )


def test_bad_ema_in_the_config_fails_before_the_data_check(tmp_path):
    from snugfit import TrainConfig
    from snugfit.app.run import train

    with pytest.raises(SnugfitError, match=r"^ema: expected a decay between 0 and 1"):
        train(TrainConfig(str(tmp_path / "missing"), ema=1.0), console=quiet())


def test_weights_held_in_bf16_are_averaged_in_fp32():
    from snugfit import Learner
    from snugfit.models import create_model
    from test_learner import fake_dls

    torch.manual_seed(0)
    dls = fake_dls(n_batches=2)  # bf16 convolutions are slow on CPUs without bf16
    model = create_model("test_resnet", dls.c, pretrained=False)
    model.fc.to(torch.bfloat16)  # a layer kept in bf16 (autocast computes in bf16)
    learn = Learner(dls, model, console=quiet(), precision="bf16", bn_freeze_below=0)
    learn.unfreeze()
    steps = StepWeights()
    learn.fit(2, lr=1e-2, cbs=[steps, EMA(0.9)])
    kept, expected = learn.model.fc.weight, hand_ema(steps.start, steps.steps, 0.9)["fc.weight"]
    assert kept.dtype == torch.bfloat16
    # the fp32 average rounded once to bf16, not an average of bf16 roundings
    assert (kept.double() - expected.double()).abs().max() < 1e-3
    assert (steps.steps[-1]["fc.weight"].double() - expected.double()).abs().max() > 3e-3
