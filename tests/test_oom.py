"""Out-of-memory recovery, with OOMs injected on the CPU by a fault hook."""

import pytest
import torch

from snugfit.callbacks import Callback
from snugfit.errors import SnugfitError
from snugfit.memory.oom import MemorySettings, is_oom, next_fallback
from test_learner import fake_dls, make_learner, snapshot


def inject_oom(model, should_fail):
    """Raise torch.OutOfMemoryError before a forward when ``should_fail(x)`` says so."""

    def hook(module, args):
        if should_fail(args[0]):
            raise torch.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2.00 GiB (injected)"
            )

    return model.register_forward_pre_hook(hook)


class CountSamples(Callback):
    def __init__(self):
        self.samples, self.steps = 0, 0

    def after_batch(self, learn):
        self.samples += len(learn.yb)

    def after_step(self, learn):
        self.steps += 1


def trained(micro_bs=None, fail=None, arch="test_resnet", epochs=2, **kw):
    learn = make_learner(arch, dls=fake_dls(n_batches=3, bs=8), micro_bs=micro_bs, **kw)
    learn.unfreeze()
    if fail is not None:
        inject_oom(learn.model, lambda x: fail(learn, x))
    counter = CountSamples()
    learn.fit(epochs, lr=1e-3, cbs=[counter])
    return learn, counter


def assert_same_params(a, b, atol=1e-6):
    sa, sb = snapshot(a.model), snapshot(b.model)
    for k in sa:
        assert torch.allclose(sa[k].float(), sb[k].float(), atol=atol), k


def test_oom_halves_the_micro_batch_and_keeps_the_math(caplog):
    # BN is frozen by the small micro-batch (< 16), so micro-batches are exact
    with caplog.at_level("WARNING", logger="snugfit"):
        learn, counter = trained(fail=lambda learn, x: learn.model.training and len(x) > 3)
    ref, ref_counter = trained(micro_bs=2)
    assert learn.micro_bs == 2
    assert_same_params(learn, ref)
    assert counter.samples == ref_counter.samples == 2 * 3 * 8  # no sample skipped
    assert counter.steps == ref_counter.steps == 2 * 3  # one optimizer step per batch
    # 8 -> 4 -> 2: two events, one log line each, counted in the epoch's metrics
    assert [(e["from"]["micro_bs"], e["to"]["micro_bs"]) for e in learn.oom_events] == [
        (8, 4),
        (4, 2),
    ]
    lines = [r.getMessage() for r in caplog.records if "out of memory" in r.getMessage()]
    assert len(lines) == 2 and "retrying the same batch with micro-batch 4 x 2 steps" in lines[0]
    assert [r["ooms"] for r in learn.recorder.rows] == [2, 0]


def test_oom_in_a_later_micro_batch_discards_partial_gradients():
    # fail on the 2nd micro-batch of the first step, after one backward already ran
    calls = {"n": 0}

    def fail(learn, x):
        calls["n"] += 1
        return learn.model.training and calls["n"] == 2

    learn, _ = trained(micro_bs=4, fail=fail)
    ref, _ = trained(micro_bs=2)
    assert learn.micro_bs == 2
    assert_same_params(learn, ref)


def test_oom_on_a_model_without_batchnorm_matches_the_small_micro_batch_run():
    learn, _ = trained(arch="test_vit", fail=lambda learn, x: learn.model.training and len(x) > 3)
    ref, _ = trained(arch="test_vit", micro_bs=2)
    assert_same_params(learn, ref)


def test_after_micro_batch_one_checkpointing_is_tried_from_the_start_size():
    def fail(learn, x):
        return learn.model.training and not learn.checkpointing

    learn, counter = trained(fail=fail, epochs=1)
    assert learn.checkpointing and learn.micro_bs == 8
    assert [e["to"]["micro_bs"] for e in learn.oom_events] == [4, 2, 1, 8]
    assert counter.samples == 3 * 8


def test_gives_up_with_a_message_when_nothing_fits():
    with pytest.raises(SnugfitError, match="even with a micro-batch of 1"):
        trained(fail=lambda learn, x: learn.model.training, epochs=1)


def test_validation_oom_uses_smaller_chunks_and_same_metrics():
    ref, _ = trained(epochs=1)
    learn, _ = trained(epochs=1, fail=lambda learn, x: not learn.model.training and len(x) > 2)
    assert learn.eval_bs == 2
    assert learn.recorder.rows[-1]["valid_loss"] == pytest.approx(
        ref.recorder.rows[-1]["valid_loss"], abs=1e-6
    )


def test_other_errors_are_not_swallowed():
    learn = make_learner()

    def boom(module, args):
        raise ValueError("a real bug")

    learn.model.register_forward_pre_hook(boom)
    with pytest.raises(ValueError, match="a real bug"):
        learn.fit(1)


def test_is_oom_and_fallback_order():
    assert is_oom(torch.OutOfMemoryError("x"))
    assert is_oom(RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED. This error may appear"))
    assert not is_oom(RuntimeError("shape mismatch"))
    s = MemorySettings(4, False, "fp32")
    seq = []
    while s is not None:
        seq.append((s.micro_bs, s.checkpointing, s.precision))
        s = next_fallback(s, 4, "bf16")
    assert seq == [
        (4, False, "fp32"), (2, False, "fp32"), (1, False, "fp32"),
        (4, True, "fp32"), (2, True, "fp32"), (1, True, "fp32"),
        (4, True, "bf16"), (2, True, "bf16"), (1, True, "bf16"),
    ]  # fmt: skip
