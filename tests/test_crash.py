"""Crash-safe runs: killed, interrupted or torn mid-write, a run resumes to the same weights.

``snugfit train`` runs in child processes on a tiny model and data set (fine_tune:
one frozen epoch, two unfrozen; auto: one head epoch on precomputed features, one
with augmentation, two unfrozen; 8 batches each, a checkpoint after every batch).
Children are forked from this process, where torch is already imported, so a
run takes about a second; the slow test starts real ``python -m snugfit``
processes. Each run is compared with an uninterrupted one: final weights within
1e-6, and the same rows in ``metrics.csv``.
"""

from __future__ import annotations

import csv
import logging
import multiprocessing
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fixtures import make_image_folder
from snugfit.callbacks import Callback, SaveCheckpoint
from snugfit.errors import WriteError
from snugfit.saving import checkpoint
from snugfit.saving.checkpoint import read_checkpoint
from snugfit.train.interrupt import DeferredInterrupt
from test_learner import snapshot
from test_resume import learner

SRC = Path(__file__).resolve().parents[1] / "src"
ARGS = ["--arch", "test_efficientnet", "--no-pretrained", "--precision", "fp32", "--workers", "0",
        "--size", "32", "--bs", "4", "--checkpoint-every", "1"]  # fmt: skip
RECIPES = {  # the arguments, and the epochs of each fit (of 8 batches)
    "fine_tune": (["--recipe", "fine_tune", "--freeze-epochs", "1", "--epochs", "2"], [1, 2]),
    "auto": (
        ["--recipe", "auto", "--head-epochs", "1", "--epochs", "2", "--no-lr-find"],
        [1, 1, 2],
    ),
}
TIMEOUT = 300  # s for one run: generous, the machine may be busy
CKPT = "checkpoint.safetensors"


class Run:
    """One ``snugfit train`` child process; its output goes to ``log``.

    Forked from this process (``real=False``: torch is imported already) or a
    new ``python -m snugfit`` process. One thread, as the comparison needs.
    """

    def __init__(self, argv: list[str], log: Path, cache: Path, real: bool = False):
        env = {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "SNUGFIT_CACHE": str(cache)}
        self.log, self.real = log, real
        if real:
            path = os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])
            env = {**os.environ, **env, "PYTHONPATH": path}
            with open(log, "w") as f:
                self._popen = subprocess.Popen(
                    [sys.executable, "-m", "snugfit", *argv], stdout=f, stderr=subprocess.STDOUT,
                    env=env,
                )  # fmt: skip
            self.pid = self._popen.pid
        else:
            self._process = multiprocessing.get_context("fork").Process(
                target=_forked_cli, args=(argv, str(log), env)
            )
            self._process.start()
            self.pid = self._process.pid

    def poll(self) -> int | None:
        """The exit status (negative: killed by that signal), or None while it runs."""
        return self._popen.poll() if self.real else self._process.exitcode

    def wait(self, timeout: float = TIMEOUT) -> int:
        deadline = time.monotonic() + timeout
        while (rc := self.poll()) is None:
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"run did not end within {timeout} s; log:\n{self.output()}")
            time.sleep(0.01)
        if not self.real:
            self._process.join()
        return rc

    def kill(self, sig=signal.SIGKILL) -> bool:
        """Send ``sig``; False if the run had ended already."""
        if self.poll() is not None:
            return False
        os.kill(self.pid, sig)
        return True

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _forked_cli(argv: list[str], log: str, env: dict) -> None:
    os.environ.update(env)
    torch.set_num_threads(1)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = sys.stderr = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    logging.getLogger().handlers.clear()  # pytest's: let the CLI log to the file
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from snugfit.app.cli import main

    sys.exit(main(argv))


def start(data: Path, out: Path, recipe: str, *extra: str, real=False, argv=None) -> Run:
    out.parent.mkdir(parents=True, exist_ok=True)
    n = len(list(out.parent.glob(f"{out.name}-*.log")))
    argv = argv or ["train", str(data), "--out", str(out), *ARGS, *RECIPES[recipe][0], *extra]
    return Run(argv, out.parent / f"{out.name}-{n}.log", out.parent / "cache", real)


def results(out: Path) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """The final weights and the rows of ``metrics.csv`` of a finished run."""
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return load_file(str(out / "model" / "model.safetensors")), rows


def assert_same_run(out: Path, reference) -> float:
    """Weights within 1e-6 and the same epoch rows as ``reference``; returns the largest
    weight difference."""
    weights, rows = results(out)
    ref_weights, ref_rows = reference.results
    assert weights.keys() == ref_weights.keys()
    diff = max((weights[k].double() - ref_weights[k].double()).abs().max().item() for k in weights)
    assert diff <= 1e-6
    # one row per epoch: none lost, none twice
    assert len(rows) == len(ref_rows) == sum(RECIPES[reference.recipe][1])
    for row, ref in zip(rows, ref_rows, strict=True):
        assert row.keys() == ref.keys()
        for k in row.keys() - {"time"}:
            assert float(row[k]) == pytest.approx(float(ref[k]), abs=2e-6), k
    assert not list(out.rglob(".*.tmp-*"))  # no temporary file left behind
    return diff


def mtime(path: Path) -> int | None:
    return path.stat().st_mtime_ns if path.is_file() else None


def total_steps(recipe: str) -> int:
    return 8 * sum(RECIPES[recipe][1])


def steps_done(ckpt: Path, recipe: str) -> int:
    """The optimizer steps before the checkpoint's position."""
    if not ckpt.is_file():
        return 0
    p = read_checkpoint(ckpt)[1]["position"]
    return 8 * (sum(RECIPES[recipe][1][: p["fit_index"]]) + p["epoch"]) + p["iter"]


def wait_for_write(run: Run, ckpt: Path, before: int | None) -> bool:
    """Wait until ``run`` rewrites ``ckpt``; False if it ended first."""
    deadline = time.monotonic() + TIMEOUT
    while mtime(ckpt) == before:
        if run.poll() is not None:
            return False
        assert time.monotonic() < deadline, f"no checkpoint written in {TIMEOUT} s"
        time.sleep(0.002)
    return True


@pytest.fixture(scope="module")
def crash_data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("crash") / "data", n_train=16, n_valid=4)


class Reference:
    """An uninterrupted run of ``recipe``: its results and the time of a step (s)."""

    def __init__(self, data: Path, recipe: str):
        out = data.parent / f"reference-{recipe}"
        run = start(data, out, recipe)
        assert wait_for_write(run, out / CKPT, None)
        first = mtime(out / CKPT)
        assert run.wait() == 0, run.output()
        self.recipe, self.results = recipe, results(out)
        self.step_s = (mtime(out / CKPT) - first) / 1e9 / (total_steps(recipe) - 1)


@pytest.fixture(scope="module")
def references(crash_data):
    """``references[recipe]``: made on first use, once per module."""

    class Cache(dict):
        def __missing__(self, recipe):
            self[recipe] = Reference(crash_data, recipe)
            return self[recipe]

    return Cache()


def run_with_kills(data: Path, out: Path, ref: Reference, kills: int, seed: int, real=False):
    """Train, SIGKILL it ``kills`` times at random points, resuming after each kill
    (from scratch while no checkpoint exists), then let it finish. Returns where
    each kill landed."""
    rng = random.Random(seed)
    ckpt, landed, steps = out / CKPT, [], total_steps(ref.recipe)
    while True:
        resume = ("--resume", str(ckpt)) if ckpt.is_file() else ()
        before, done = mtime(ckpt), steps_done(ckpt, ref.recipe)
        run = start(data, out, ref.recipe, *resume, real=real)
        if len(landed) == kills or done == steps:
            assert run.wait() == 0, run.output()
            return landed
        if rng.random() < 0.2:  # while starting: imports, data check, loading the checkpoint
            time.sleep(rng.uniform(0, 3.0 if real else 0.5))
            phase = "starting"
        else:  # while training: after the run's first checkpoint write, a random part of the rest
            if not wait_for_write(run, ckpt, before):
                pytest.fail(f"the run ended without a checkpoint:\n{run.output()}")
            time.sleep(rng.uniform(0, ref.step_s * (steps - done)))
            phase = "training"
        run.kill()
        rc = run.wait()
        if rc == -signal.SIGKILL:
            landed.append(f"{phase}: step {done} -> {steps_done(ckpt, ref.recipe)}")
        else:
            # Finished first (the signal can reach an exited, not yet reaped process);
            # resuming it only exports.
            assert rc == 0, run.output()


SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    ("recipe", "seed", "real"),
    [("fine_tune", 0, False), ("auto", 1, False)]
    + [pytest.param(*p, marks=SLOW) for p in [("fine_tune", 2, False), ("auto", 3, False)]]
    # new ``python -m snugfit`` processes, imports and all
    + [pytest.param(*p, marks=SLOW) for p in [("fine_tune", 10, True), ("auto", 11, True)]],
)
def test_sigkill_at_random_points_then_resume_gives_the_uninterrupted_run(
    crash_data, references, tmp_path, recipe, seed, real
):
    out, ref = tmp_path / "run", references[recipe]
    landed = run_with_kills(crash_data, out, ref, kills=4, seed=seed, real=real)
    assert landed
    diff = assert_same_run(out, ref)
    print(f"\n{recipe} seed {seed}: survived {len(landed)} SIGKILLs; max diff {diff}")
    print("\n".join(f"  {where}" for where in landed))


@pytest.mark.parametrize("real", [False, pytest.param(True, marks=SLOW)])
def test_ctrl_c_saves_a_checkpoint_and_prints_the_resume_command(
    crash_data, references, tmp_path, real
):
    out, ref = tmp_path / "run", references["fine_tune"]
    ckpt = out / CKPT
    run = start(crash_data, out, "fine_tune", real=real)
    assert wait_for_write(run, ckpt, None)
    time.sleep(random.Random(3).uniform(0, 8 * ref.step_s))
    assert run.kill(signal.SIGINT), "the run ended before Ctrl-C"
    assert run.wait() == 130, run.output()
    log = run.output()
    assert f"interrupted: saved a resumable checkpoint to {ckpt}" in log
    command = log.split("snugfit: resume with: ")[1].splitlines()[0]
    argv = shlex.split(command)
    assert argv[0] == "snugfit" and argv[-2:] == ["--resume", str(ckpt)]
    assert 0 < steps_done(ckpt, "fine_tune") < total_steps("fine_tune")
    assert start(crash_data, out, "fine_tune", argv=argv[1:], real=real).wait() == 0
    assert_same_run(out, ref)


class CtrlC(Callback):
    """Press Ctrl-C during the forward pass of one batch (mid-step)."""

    def __init__(self, fit_index, epoch, batch):
        self.at = (fit_index, epoch, batch)

    def after_loss(self, learn):
        if (learn.fit_index, learn.epoch, learn.iter) == self.at:
            signal.raise_signal(signal.SIGINT)


def test_ctrl_c_mid_step_finishes_the_step_saves_and_resumes_exactly(tmp_path):
    ref = learner()
    ref.fine_tune(2, freeze_epochs=1)
    ckpt = tmp_path / "c.safetensors"
    stopped = learner()
    with pytest.raises(KeyboardInterrupt):
        stopped.fine_tune(2, freeze_epochs=1, cbs=[SaveCheckpoint(ckpt), CtrlC(1, 0, 1)])
    assert read_checkpoint(ckpt)[1]["position"] == {"fit_index": 1, "epoch": 0, "iter": 2}
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler put back
    resumed = learner()
    resumed.fine_tune(2, freeze_epochs=1, resume=ckpt)
    a, b = snapshot(ref.model), snapshot(resumed.model)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_deferred_interrupt():
    with DeferredInterrupt() as interrupt:
        signal.raise_signal(signal.SIGINT)  # first: a request only
        assert interrupt.requested
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)  # second: at once
        interrupt.requested = False
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt), DeferredInterrupt():  # a request no loop acted on
        signal.raise_signal(signal.SIGINT)


def _torn_save_file(tensors, filename, metadata=None):
    """safetensors' save_file, stopped half-way through the file."""
    from safetensors.torch import save

    data = save(tensors, metadata)
    with open(filename, "wb") as f:
        f.write(data[: len(data) // 2])
    raise OSError(28, "No space left on device")


def test_a_failed_checkpoint_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    learn = learner()
    learn.fit(1)
    path = learn.save_checkpoint(tmp_path / "c.safetensors")
    saved_tensors, saved_meta = read_checkpoint(path)
    learn.fit(1)  # new weights, moments, history
    monkeypatch.setattr(checkpoint, "save_file", _torn_save_file)
    with pytest.raises(WriteError, match=f"cannot write {path}: no space left on device"):
        learn.save_checkpoint(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]  # no temporary left
    tensors, meta = read_checkpoint(path)
    assert meta == saved_meta
    assert tensors.keys() == saved_tensors.keys()
    assert all(torch.equal(tensors[k], saved_tensors[k]) for k in tensors)
    learner().load_checkpoint(path)  # and it loads


def test_a_process_killed_mid_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    learn = learner()
    learn.fit(1)
    path = learn.save_checkpoint(tmp_path / "c.safetensors")
    saved = path.read_bytes()
    learn.fit(1)

    def killed_mid_write(tensors, filename, metadata=None):
        try:
            _torn_save_file(tensors, filename, metadata)
        finally:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup runs: the temporary stays

    def save_in_child():
        torch.set_num_threads(1)  # a forked child must not use the parent's OpenMP threads
        learn.save_checkpoint(path)

    monkeypatch.setattr(checkpoint, "save_file", killed_mid_write)
    child = multiprocessing.get_context("fork").Process(target=save_in_child)
    child.start()
    child.join(60)
    if child.exitcode is None:
        child.kill()
    assert child.exitcode == -signal.SIGKILL
    leftover = tmp_path / f".c.safetensors.tmp-{child.pid}"
    assert leftover.is_file() and 0 < leftover.stat().st_size < len(saved)
    assert path.read_bytes() == saved
    learner().load_checkpoint(path)
    monkeypatch.undo()
    learn.save_checkpoint(path)  # the next write removes what the killed process left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]


def _sleep_without_sigint(ready):
    from snugfit.data.datasets import ignore_sigint

    ignore_sigint(0)
    ready.set()
    time.sleep(30)


def test_loader_workers_leave_ctrl_c_to_the_main_process(image_folder):
    from snugfit.data.datasets import ignore_sigint
    from snugfit.data.loaders import ImageDataLoaders

    dls = ImageDataLoaders.from_folder(image_folder, num_workers=1, cache=False)
    assert dls.train.dataloader().worker_init_fn is ignore_sigint
    # and a process that ran it survives the SIGINT a terminal sends its group
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    p = ctx.Process(target=_sleep_without_sigint, args=(ready,))
    p.start()
    try:
        assert ready.wait(60)
        os.kill(p.pid, signal.SIGINT)
        p.join(1.0)
        assert p.is_alive()
    finally:
        p.kill()
        p.join()
