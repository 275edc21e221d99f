"""DDP on the CPU: 2 processes on gloo train like 1 process with the same global batch.

One spawn of two ranks runs every scenario (starting processes costs more than
training the tiny model); each rank saves what it ended with, and the tests
compare that with single-process runs made here.
"""

from __future__ import annotations

import io
import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from rich.console import Console
from torch import nn

from fixtures import make_image_folder, make_segmentation_folder
from snugfit import Learner
from snugfit.callbacks import EMA, Callback
from snugfit.data.datasets import EpochShuffle, ShardBatches
from snugfit.data.loaders import ImageDataLoaders
from snugfit.distributed import shard

WORLD = 2
BS = 7  # global batch: 18 images give batches of 7, 7, 4, split 3+4, 3+4, 2+2
TIMEOUT = 120


class TinyNet(nn.Module):
    """A conv net without BatchNorm: micro-batches and shards are exact."""

    def __init__(self, n_classes: int = 2):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU())
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4, n_classes)

    def forward(self, x):
        return self.head(self.pool(self.body(x)))


def _train(
    root: Path, csv: Path | None = None, fail=None, epochs: int = 2, cache_root=None,
    augment=False, ema=False,
) -> dict:  # fmt: skip
    dls = ImageDataLoaders.from_folder(
        root, bs=BS, size=16, num_workers=0, device="cpu", augment=augment,
        cache=cache_root is not None, cache_root=cache_root,
    )  # fmt: skip
    torch.manual_seed(0)
    learn = Learner(
        dls,
        TinyNet(),
        metrics=["accuracy"],
        precision="fp32",
        console=Console(file=io.StringIO(), force_terminal=False),
    )
    learn.recorder.csv_path = csv
    if fail is not None:

        def hook(module, args):
            if fail(learn, args[0]):
                raise torch.OutOfMemoryError("CUDA out of memory. (injected)")

        learn.model.register_forward_pre_hook(hook)
    learn.fit(epochs, lr=1e-2, cbs=[EMA(0.9)] if ema else [])
    return {
        "preds": learn.get_preds(),
        "params": {k: v.detach().clone() for k, v in learn.model.state_dict().items()},
        "rows": learn.recorder.rows,
        "micro_bs": learn.micro_bs,
        "oom_events": learn.oom_events,
        "distributed": learn.distributed,
        "decoded": dls.train.cache_filled + dls.valid.cache_filled,
    }


class TinySegNet(nn.Module):
    """Per-pixel logits without BatchNorm: shards are exact."""

    def __init__(self, n_classes: int = 4):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, n_classes, 1)
        )

    def forward(self, x):
        return self.net(x)

    def get_classifier(self):
        return self.net[-1]  # the last layer group


def _train_seg(root: Path) -> dict:
    from snugfit import SegmentationDataLoaders

    dls = SegmentationDataLoaders.from_folder(
        root, bs=BS, size=(16, 24), crop=12, num_workers=0, device="cpu", cache=False
    )
    torch.manual_seed(0)
    learn = Learner(dls, TinySegNet(), metrics=["dice", "pixel_accuracy"], precision="fp32",
                    console=Console(file=io.StringIO(), force_terminal=False))  # fmt: skip
    learn.fit(2, lr=1e-2)
    return {
        "params": {k: v.detach().clone() for k, v in learn.model.state_dict().items()},
        "rows": learn.recorder.rows,
    }


class _CtrlCOnRank1(Callback):
    """Ctrl-C reaching rank 1 only, during the second batch (a terminal's signal
    reaches the ranks at different moments)."""

    def before_batch(self, learn):
        if int(os.environ["RANK"]) == 1 and learn.train_iter == 1:
            learn.ctrl_c.requested = True


def _ctrl_c_on_rank1(root: Path) -> dict:
    dls = ImageDataLoaders.from_folder(
        root, bs=BS, size=16, num_workers=0, device="cpu", cache=False, augment=False
    )
    learn = Learner(
        dls, TinyNet(), precision="fp32", console=Console(file=io.StringIO()), cbs=[_CtrlCOnRank1()]
    )
    try:
        learn.fit(2, lr=1e-2)
    except KeyboardInterrupt:
        return {"stopped_after": learn.train_iter}
    return {"stopped_after": None}


def _fail_on_rank1(learn, x):
    return int(os.environ["RANK"]) == 1 and learn.model.training and len(x) > 2


def _worker(rank: int, port: int, root: str, out: str) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    import torch.distributed as dist

    out = Path(out)
    results = {
        "plain": _train(Path(root), csv=out / "metrics.csv"),
        "oom": _train(Path(root), fail=_fail_on_rank1),
        "ctrl_c": _ctrl_c_on_rank1(Path(root)),
        "cached": _train(Path(root), cache_root=out / "cache"),
        "augmented": _train(Path(root), augment=True),
        "ema": _train(Path(root), ema=True),
        "segmentation": _train_seg(Path(root).parent / "seg"),
    }
    torch.save(results, out / f"rank{rank}.pt")
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    """Two ranks trained (bounded by a timeout), and the single-process reference."""
    tmp = tmp_path_factory.mktemp("ddp")
    root = make_image_folder(tmp / "data", n_train=9, n_valid=5)
    make_segmentation_folder(tmp / "seg", n=18, sizes=((16, 24),))
    out = tmp / "out"
    out.mkdir()
    start = time.perf_counter()
    ctx = mp.start_processes(
        _worker, args=(_free_port(), str(root), str(out)), nprocs=WORLD, join=False,
        start_method="spawn",
    )  # fmt: skip
    deadline = time.monotonic() + TIMEOUT
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"DDP workers still running after {TIMEOUT} s: a hang")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    single = _train(root)
    return {
        "ranks": ranks,
        "single": single,
        "single_augmented": _train(root, augment=True),
        "single_ema": _train(root, ema=True),
        "single_segmentation": _train_seg(tmp / "seg"),
        "out": out,
        "seconds": time.perf_counter() - start,
    }


def _assert_same_params(a: dict, b: dict, atol: float = 1e-5) -> None:
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol, rtol=0), (k, (a[k] - b[k]).abs().max())


def test_two_ranks_train_like_one_process_with_the_same_global_batch(ddp_runs):
    single = ddp_runs["single"]
    assert not single["distributed"]
    for r in ddp_runs["ranks"]:
        assert r["plain"]["distributed"]
        _assert_same_params(r["plain"]["params"], single["params"])
    # metrics reduced over the ranks: the whole validation set, each sample once
    for row, ref in zip(ddp_runs["ranks"][0]["plain"]["rows"], single["rows"], strict=True):
        assert row["valid_loss"] == pytest.approx(ref["valid_loss"], abs=1e-6)
        assert row["accuracy"] == pytest.approx(ref["accuracy"], abs=1e-6)
        assert row["train_loss"] == pytest.approx(ref["train_loss"], abs=1e-6)
    rows = [[{**row, "time": 0} for row in r["plain"]["rows"]] for r in ddp_runs["ranks"]]
    assert rows[0] == rows[1]  # every rank knows the same numbers


def test_every_rank_keeps_the_same_average_as_one_process(ddp_runs):
    """EMA under DDP: no communication, the same weights, so the same average."""
    single = ddp_runs["single_ema"]
    assert not torch.allclose(
        single["params"]["head.weight"], ddp_runs["single"]["params"]["head.weight"]
    )
    for r in ddp_runs["ranks"]:
        _assert_same_params(r["ema"]["params"], single["params"])
        for row, ref in zip(r["ema"]["rows"], single["rows"], strict=True):
            assert row["valid_loss"] == pytest.approx(ref["valid_loss"], abs=1e-6)
    a, b = (r["ema"]["params"] for r in ddp_runs["ranks"])
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_only_rank_0_writes_the_metrics_file(ddp_runs):
    lines = (ddp_runs["out"] / "metrics.csv").read_text().splitlines()
    assert len(lines) == 1 + 2  # a header and one row per epoch, not one per rank


def test_an_oom_on_one_rank_is_recovered_on_both_with_the_same_math(ddp_runs):
    rank0, rank1 = (r["oom"] for r in ddp_runs["ranks"])
    # rank 1 ran out of memory with micro-batches of 4 (and 3): both ranks went to 2
    assert rank0["micro_bs"] == rank1["micro_bs"] == 2
    assert [e["to"] for e in rank0["oom_events"]] == [e["to"] for e in rank1["oom_events"]]
    assert rank0["oom_events"] and "rank 1" in rank0["oom_events"][0]["error"]
    for r in (rank0, rank1):
        _assert_same_params(r["params"], ddp_runs["single"]["params"])


def test_shards_split_each_global_batch_without_overlap():
    order = EpochShuffle(18, seed=3)
    parts = [list(ShardBatches(order, BS, r, 3)) for r in range(3)]
    whole = [list(order)[i : i + BS] for i in range(0, 18, BS)]
    for b, batch in enumerate(whole):
        assert [i for p in parts for i in p[b]] == batch  # contiguous, in order, disjoint
    assert [len(p[2]) for p in parts] == [1, 1, 2]  # a short batch: sizes differ by one
    assert shard(1, 0, 2) == slice(0, 0) and shard(1, 1, 2) == slice(0, 1)


def test_get_preds_gathers_the_whole_validation_set_on_every_rank(ddp_runs):
    # Validation is sharded; the report's interpretation needs every image, in order.
    outs, targs = ddp_runs["single"]["preds"]
    assert len(targs) == 10
    for rank in ddp_runs["ranks"]:
        r_outs, r_targs = rank["plain"]["preds"]
        assert torch.equal(r_targs, targs)
        assert torch.allclose(r_outs, outs, atol=1e-5, rtol=0)


def test_ctrl_c_on_one_rank_stops_every_rank_after_the_same_step(ddp_runs):
    # Without agreeing, rank 0 would train on and wait forever for rank 1.
    assert [r["ctrl_c"]["stopped_after"] for r in ddp_runs["ranks"]] == [2, 2]


def test_the_memory_plan_is_for_one_ranks_shard(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "data", n_train=4, n_valid=2)
    dls = ImageDataLoaders.from_folder(root, bs=8, size=16, num_workers=0, device="cpu")
    learn = Learner(dls, TinyNet(), precision="fp32", console=Console(file=io.StringIO()))
    assert learn.plan("1GB", apply=False).bs == 8
    learn.distributed = True  # as under torchrun with 3 ranks
    monkeypatch.setattr("snugfit.distributed.world_size", lambda: 3)
    assert learn.plan("1GB", apply=False).bs == 3  # ceil(8 / 3): the largest shard


def test_ranks_share_the_cache_pre_pass(ddp_runs):
    # Each rank decodes about half of the 28 files into the shared pixel cache
    # (not all of them each), and training from the cache is unchanged.
    decoded = [r["cached"]["decoded"] for r in ddp_runs["ranks"]]
    assert sum(decoded) == 18 + 10 and max(decoded) <= 15, decoded
    for rank in ddp_runs["ranks"]:
        _assert_same_params(rank["cached"]["params"], ddp_runs["single"]["params"])


def test_ranks_augment_their_shards_exactly_as_one_process(ddp_runs):
    # Every rank draws each global batch's crops, flips, rotations and lighting from
    # one stream and applies its shard's rows: the same images as one process.
    single = ddp_runs["single_augmented"]
    assert not all(
        torch.equal(single["params"][k], ddp_runs["single"]["params"][k]) for k in single["params"]
    ), "augmentation should change the run"
    for rank in ddp_runs["ranks"]:
        _assert_same_params(rank["augmented"]["params"], single["params"])


def test_two_ranks_segment_like_one_process(ddp_runs):
    """Sharded crops, augmentations drawn per global batch, and the validation Dice
    from the ranks' summed confusion matrices: as one process."""
    single = ddp_runs["single_segmentation"]
    for rank in ddp_runs["ranks"]:
        _assert_same_params(rank["segmentation"]["params"], single["params"])
        for r1, r2 in zip(rank["segmentation"]["rows"], single["rows"], strict=True):
            assert r1["dice"] == pytest.approx(r2["dice"], abs=1e-6)
            assert r1["valid_loss"] == pytest.approx(r2["valid_loss"], abs=1e-5)
