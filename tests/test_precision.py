import pytest
import torch

from snugfit.callbacks import Callback
from snugfit.errors import SnugfitError
from snugfit.memory import precision as prec
from test_learner import fake_dls, make_learner, snapshot


def test_auto_precision_per_device(monkeypatch):
    assert prec.resolve_precision("auto", "cpu") == "fp32"  # until measured faster
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert prec.resolve_precision("auto", "cuda") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert prec.resolve_precision("auto", "cuda") == "fp16"
    assert prec.resolve_precision("fp16", "cpu") == "fp16"
    with pytest.raises(SnugfitError, match="precision: unknown value 'half'"):
        prec.resolve_precision("half", "cpu")


def test_fastai_names_switch_precision():
    learn = make_learner()
    assert learn.to_fp16() is learn and learn.precision == "fp16" and learn.scaler is not None
    assert learn.to_bf16().precision == "bf16" and learn.scaler is None
    assert learn.to_fp32().precision == "fp32"


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_on_cpu(precision):
    learn = make_learner(precision=precision)
    learn.unfreeze()
    before = snapshot(learn.model)
    learn.fit(1, lr=1e-3)
    after = snapshot(learn.model)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(v.dtype == before[k].dtype for k, v in after.items())  # master weights stay fp32
    assert torch.isfinite(torch.tensor(learn.recorder.losses)).all()


class InfGradOnce(Callback):
    def __init__(self):
        self.done = False

    def before_step(self, learn):
        if not self.done:
            p = next(p for p in learn.model.parameters() if p.grad is not None)
            p.grad[(0,) * p.grad.ndim] = float("inf")
            self.done = True
            self.params = snapshot(learn.model)
            self.scale = learn.scaler.get_scale()

    def after_step(self, learn):
        if not hasattr(self, "after"):
            self.after = snapshot(learn.model)
            self.scale_after = learn.scaler.get_scale()


@pytest.mark.parametrize("opt", ["adamw", "sgd"])
def test_fp16_scaler_skips_a_step_with_an_inf_gradient(opt):
    learn = make_learner(precision="fp16", opt=opt)
    learn.unfreeze()
    cb = InfGradOnce()
    learn.fit(1, lr=1e-2, cbs=[cb])
    # the poisoned step changed nothing (no update, no weight decay) and halved the scale
    for k, v in cb.params.items():
        assert torch.equal(v, cb.after[k]), k
    assert cb.scale_after == cb.scale / 2
    # the following steps trained normally
    final = snapshot(learn.model)
    assert any(not torch.equal(cb.after[k], final[k]) for k in final)


@pytest.mark.parametrize("fast", ["bf16", "fp32"])
def test_auto_precision_on_cpu_keeps_the_faster(monkeypatch, fast):
    import snugfit.callbacks.auto_precision as ap
    import snugfit.train.learner as learner_mod

    monkeypatch.setattr(learner_mod, "cpu_has_native_bf16", lambda: True)
    learn = make_learner(precision="auto", dls=fake_dls(n_batches=8))
    clock = {"t": 0.0}

    def fake_time():
        # a step "takes" 0.5 s in the fast precision, 1 s in the other
        clock["t"] += 0.5 if learn.precision == fast else 1.0
        return clock["t"]

    monkeypatch.setattr(ap, "perf_counter", fake_time)
    seen = []

    class Spy(Callback):
        order = 0

        def before_batch(self, learn):
            seen.append(learn.precision)

    learn.fit(1, lr=1e-3, cbs=[Spy()])
    # six measuring steps alternate, then the faster one stays
    assert seen[:6] == ["fp32", "bf16"] * 3 and seen[6:] == [fast, fast], seen
    assert learn.precision == fast
