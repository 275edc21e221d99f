import pytest
import torch

from snugfit.errors import SnugfitError
from snugfit.saving.checkpoint import read_checkpoint
from test_learner import make_learner, snapshot


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_checkpoint_round_trip_continues_identically(tmp_path, precision):
    a = make_learner("test_vit", precision=precision, micro_bs=3)
    a.unfreeze()
    a.fit(1, lr=1e-3)
    path = a.save_checkpoint(tmp_path / "ckpt.safetensors")
    b = make_learner("test_vit", precision="fp32")
    b.load_checkpoint(path)
    assert b.precision == precision and b.micro_bs == 3 and b.frozen_to == 0
    if precision == "fp16":
        assert b.scaler.state_dict() == a.scaler.state_dict()
    torch.manual_seed(1)
    a.fit(1, lr=1e-3)
    torch.manual_seed(1)
    b.fit(1, lr=1e-3)
    sa, sb = snapshot(a.model), snapshot(b.model)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_checkpoint_keeps_freeze_state_and_optimizer_moments(tmp_path):
    a = make_learner()
    a.freeze_to(2)
    a.fit(1, lr=1e-3)
    a.save_checkpoint(tmp_path / "c.safetensors")
    tensors, meta = read_checkpoint(tmp_path / "c.safetensors")
    assert meta["frozen_to"] == 2
    assert any(k.startswith("opt.") and k.endswith(".exp_avg") for k in tensors)
    b = make_learner()
    b.load_checkpoint(tmp_path / "c.safetensors")
    assert [all(p.requires_grad for _, p in g) for g in b.groups][:3] == [False, False, True]
    sa, sb = a.opt.state_dict()["state"], b.opt.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        assert torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"])


def test_bad_checkpoint_files(tmp_path):
    learn = make_learner()
    with pytest.raises(SnugfitError, match="checkpoint not found"):
        learn.load_checkpoint(tmp_path / "none.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(SnugfitError, match="not a snugfit checkpoint"):
        learn.load_checkpoint(bad)
    other = make_learner("test_vit")
    other.save_checkpoint(tmp_path / "vit.safetensors")
    with pytest.raises(SnugfitError, match="do not match this model"):
        learn.load_checkpoint(tmp_path / "vit.safetensors")
