"""The GPU verification kit: one command that checks every GPU claim of snugfit.

On one H200 (about 139 GiB), from the repository root::

    PYTHONUNBUFFERED=1 PYTHONPATH=src:bench python3 bench/gpu_check.py --out $OUT
    PYTHONUNBUFFERED=1 PYTHONPATH=src:bench python3 bench/gpu_check.py --quick --out $OUT

Before that, on any machine (CPU, tiny timm ``test_*`` models, no CUDA figures; the
rows are marked dry-run; tests/test_gpu_check.py runs it)::

    PYTHONPATH=src:bench python bench/gpu_check.py --dry-run

Each row prints a figure, its goal and pass/fail (`_kit.verdict`); ``--out DIR``
writes ``DIR/gpu_check.json`` with every row, rewritten after each check, so a run
stopped at its time limit keeps the figures so far. A check that raises becomes one
failed row and the kit goes on. ``--checks plan budget`` runs some of them.

The checks, with their time on one H200 (full / ``--quick``):

* ``plan`` (~4 min / ~1 min): the plan's predicted peak against
  ``torch.cuda.max_memory_allocated`` over 3 steps after a warm-up, for resnet50,
  efficientnet_b0, convnext_tiny, vit_small_patch16_224 @ 224 and efficientnet_b7
  @ 600 (and a UNet on resnet34 @ 256 when segmentation-models-pytorch is
  installed; else a skipped row: carry its wheel as /work/.library/device/README.md
  says for nvidia-h200, ``pip download --no-deps`` of segmentation-models-pytorch
  and installing it with ``--target``), fp32 / bf16 / fp16, checkpointing off / on, two
  micro-batches. Goal: error within 10%.
* ``budget`` (~1 min): efficientnet_b7 @ 600, batch 32, ``memory_budget="8GB"``
  emulated on the big card: 5 steps, no OOM, the peak under the budget, images/s
  against the largest plain fp32 batch (no accumulation) that fits 8 GB. Goal >= 1.5x.
* ``oom`` (~30 s): a ballast tensor leaves too little memory for the micro-batch
  (resnet18 @ 224, micro-batch 32, SGD, fp32, deterministic cuDNN); the run
  recovers (OOMs >= 1) with the weights of a run that used the fallback setting
  from the start (within 1e-5), validation too (same loss), and no memory left
  pinned by the failed step.
* ``speed`` (~1.5 min / ~30 s): snugfit vs a hand-written loop, resnet50 @ 224, bf16,
  channels_last (goal >= 0.98), ``compile=True``'s gain (not in --quick), and the
  loader's warm host-side rate against the training rate (goal >= 1).
* ``paths`` (~20 s): the lagged NaN check stops at the poisoned step with the
  last good weights; predict's batch sized from a 2 GB budget stays within it;
  the head solved on the device (L-BFGS, 20,000 x 1280 features) predicts as the
  CPU's solution does (goal >= 0.99 agreement).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import platform
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import timm
import torch
from rich.console import Console

from _common import peak_bytes, reset_peak, run_steps, sync, synthetic_dls, timed
from _kit import Ctx, Goal, Row, run_checks
from snugfit import Learner
from snugfit.callbacks import Callback
from snugfit.errors import NonFiniteLoss
from snugfit.memory import Candidate, MiB, enforce_budget, make_plan, parse_bytes

WITHIN_10PCT = Goal("<=", 10.0, abs_value=True)
HUGE = 1 << 40  # a budget nothing exceeds: the plan's peaks, not its choice, are wanted


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


def allocated(device: torch.device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def new_model(arch: str, device, n_classes: int = 1000, **kw):
    torch.manual_seed(0)
    return timm.create_model(arch, pretrained=False, num_classes=n_classes, **kw).to(device)


def model_size(model, size: int | None) -> int:
    """``size``, or the model's own input size (a ViT's is fixed)."""
    return size or model.pretrained_cfg["input_size"][-1]


# --------------------------------------------------------------------------- 1. plan


def plan_cases(ctx: Ctx) -> tuple[list[tuple], tuple[str, ...], bool]:
    """(arch, size, batch) cases, the precisions, and whether to try two micro-batches."""
    if ctx.dry:
        cases = [("test_resnet", 64, 4), ("test_vit", 64, 4)]  # (test_efficientnet: slow on CPUs)
        return cases, ("fp32", "bf16"), False
    if ctx.quick:
        cases = [("resnet50", 224, 64), ("vit_small_patch16_224", 224, 64)]
        return [*cases, ("efficientnet_b7", 600, 8)], ("fp32", "bf16"), False
    cases = [
        ("resnet50", 224, 64),
        ("efficientnet_b0", 224, 64),
        ("convnext_tiny", 224, 64),
        ("vit_small_patch16_224", 224, 64),
        ("efficientnet_b7", 600, 8),
    ]
    return cases, ("fp32", "bf16", "fp16"), True


def plan_rows(ctx, model, label, size, bs, precision, two, seg=0) -> list[Row]:
    """Predicted vs measured peak of each checkpointing x micro-batch for one precision."""
    plan = make_plan(
        model,
        bs=bs,
        size=size,
        budget=HUGE,
        precisions=(precision,),
        probe_device=ctx.device,
        extra_per_sample=size * size * 9 if seg else 0,  # a mask: uint8 + int64 targets
    )
    rows = []
    for c in plan.candidates:
        if c.micro_bs not in ((bs, bs // 2) if two else (bs,)):
            continue
        measured, _ = run_steps(model, c, bs, size, device=ctx.device, seg=seg)
        note = f"predicted {c.peak / MiB:.0f} MiB, measured {measured / MiB:.0f} MiB"
        if ctx.dry:  # no CUDA: the measured peak is a stand-in, the error 0
            measured, note = c.peak, f"predicted {c.peak / MiB:.0f} MiB; stand-in (no CUDA)"
        name = f"{label} {c.label} micro {c.micro_bs}/{bs}"
        error = 100 * (c.peak - measured) / measured
        rows.append(ctx.row("plan", name, error, "% error", WITHIN_10PCT, note))
    return rows


def unet_rows(ctx: Ctx) -> list[Row]:
    if importlib.util.find_spec("segmentation_models_pytorch") is None:
        note = "skipped: segmentation-models-pytorch not installed"
        return [ctx.row("plan", "unet (resnet34)", None, note=note)]
    from snugfit.models.segmentation import create_segmentation_model

    arch, size, bs = ("resnet18", 64, 2) if ctx.dry else ("resnet34", 256, 16)
    torch.manual_seed(0)
    model = create_segmentation_model(arch, 3, pretrained=False).to(ctx.device)
    rows = []
    for precision in ("fp32",) if ctx.dry else ("fp32", "bf16"):
        rows += plan_rows(ctx, model, f"unet {arch} @ {size}", size, bs, precision, False, seg=3)
    return rows


def check_plan(ctx: Ctx) -> list[Row]:
    """1. The plan's predicted peak against the measured one."""
    cases, precisions, two = plan_cases(ctx)
    rows = []
    for arch, size, bs in cases:
        kw = {"img_size": size} if ctx.dry and "vit" in arch else {}  # a ViT's size is fixed
        model = new_model(arch, ctx.device, **kw)
        size = model_size(model, size)
        for precision in precisions:
            rows += plan_rows(ctx, model, f"{arch} @ {size}", size, bs, precision, two)
        del model
        ctx.clean()
    return rows + unet_rows(ctx)


# --------------------------------------------------------------------------- 2. budget


def budget_setup(ctx: Ctx) -> tuple[str, int, int, str, int]:
    """arch, size, batch, budget, steps."""
    if ctx.dry:
        return "test_efficientnet", 64, 8, "200MB", 3
    return "efficientnet_b7", 600, 32, "8GB", 5


def snugfit_under_budget(ctx, arch, size, bs, budget, steps):
    """The Learner with ``memory_budget``: images/s over ``steps`` steps, OOMs, peak, plan."""
    dls = synthetic_dls(1, bs, size, 10, ctx.device)
    batch = dls.train[0]
    learn = Learner(dls, new_model(arch, ctx.device, 10), memory_budget=budget, console=quiet())
    learn.unfreeze()
    learn.evaluate = lambda dl: (0.0, {})  # training steps only
    learn.fit(1)  # plans, allocates the optimizer state, warms up
    dls.train = [batch] * steps
    reset_peak(ctx.device)
    seconds = timed(lambda: learn.fit(1), ctx.device)
    return steps * bs / seconds, len(learn.oom_events), peak_bytes(ctx.device), learn.memory_plan


def plain_fp32(ctx, arch, size, bs, budget, plan) -> tuple[int, float]:
    """The largest plain fp32 batch (no accumulation, no checkpointing) that runs under
    the budget, from the plan's candidates down, and its images/s."""
    if plan is None or "fp32" not in plan.profiles:
        model = new_model(arch, ctx.device, 10)
        budget_bytes = parse_bytes(budget)
        plan = make_plan(model, bs=bs, size=size, budget=budget_bytes, probe_device=ctx.device)
        del model
    fp32 = [c for c in plan.candidates if c.precision == "fp32" and not c.checkpointing]
    fits = [c.micro_bs for c in fp32 if c.fits]
    m = max(fits, default=1)
    while True:
        ctx.clean()
        enforce_budget(budget, ctx.device)
        model = new_model(arch, ctx.device, 10)
        c = Candidate("fp32", False, m, 1, 0, True, 1.0)
        try:
            return m, run_steps(model, c, m, size, steps=3, device=ctx.device, n_classes=10)[1]
        except torch.OutOfMemoryError:
            if m == 1:
                raise
            m //= 2
        finally:
            del model


def check_budget(ctx: Ctx) -> list[Row]:
    """2. A budget emulated on the big card: no OOM, within it, faster than plain fp32."""
    arch, size, bs, budget, steps = budget_setup(ctx)
    rate, ooms, peak, plan = snugfit_under_budget(ctx, arch, size, bs, budget, steps)
    budget_bytes = parse_bytes(budget)
    chosen = plan.summary() if plan is not None else "no plan"
    m, plain = plain_fp32(ctx, arch, size, bs, budget, plan)
    where = f"{arch} @ {size}, batch {bs}, {budget}"
    peak_note = f"{peak / MiB:.0f} MiB of {budget_bytes / MiB:.0f} MiB"
    return [
        ctx.row("budget", f"{where}: OOMs in {steps} steps", ooms, "", Goal("==", 0), chosen),
        ctx.row("budget", "peak / budget", peak / budget_bytes, "", Goal("<=", 1.0), peak_note),
        ctx.row("budget", "snugfit images/s", rate, "img/s"),
        ctx.row("budget", f"plain fp32 batch {m} images/s", plain, "img/s"),
        ctx.row("budget", "snugfit / plain fp32", rate / plain, "x", Goal(">=", 1.5)),
    ]


# --------------------------------------------------------------------------- 3. OOM


class FailAbove:
    """Dry run: raise an out-of-memory error before a forward of more than ``train``
    images in training, or ``valid`` in evaluation (no ballast can do it on a CPU)."""

    def __init__(self, train: int, valid: int):
        self.train, self.valid = train, valid

    def __call__(self, module, args):
        limit = self.train if module.training else self.valid
        if len(args[0]) > limit:
            raise torch.OutOfMemoryError("CUDA out of memory (dry-run stand-in)")


class TrainPeak(Callback):
    """The peak allocated memory over the training batches (validation excluded)."""

    def __init__(self, device):
        self.device, self.peak = device, 0

    def after_batch(self, learn):
        self.peak = max(self.peak, peak_bytes(self.device))


def oom_setup(ctx: Ctx) -> SimpleNamespace:
    if ctx.dry:
        return SimpleNamespace(arch="test_resnet", size=32, micro=8, n_valid=16)
    return SimpleNamespace(arch="resnet18", size=224, micro=32, n_valid=256)


def oom_learner(ctx, s, micro_bs):
    torch.manual_seed(0)
    dls = synthetic_dls(2, s.micro, s.size, 10, ctx.device)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(s.n_valid, 3, s.size, s.size, generator=g)
    dls.valid = [(x.to(ctx.device), torch.randint(0, 10, (s.n_valid,), generator=g).to(x.device))]
    model = new_model(s.arch, ctx.device, 10)
    learn = Learner(dls, model, precision="fp32", opt="sgd", micro_bs=micro_bs, console=quiet())
    learn.replan_if_needed = lambda: None  # the micro-batch is the one given
    learn.unfreeze()
    return learn


def oom_fit(ctx, s, micro_bs, room=None):
    """Fit one epoch at ``micro_bs``; with ``room``, a ballast leaves only that much
    above what was allocated before the learner (dry run: `FailAbove` instead).

    Returns the weights, the validation loss, the learner's settings and events, its
    peak over training and the memory it holds after the fit (ballast excluded).
    """
    base = allocated(ctx.device)
    learn, ballast = oom_learner(ctx, s, micro_bs), None
    if room is not None and ctx.dry:
        learn.model.register_forward_pre_hook(FailAbove(s.micro // 2, s.n_valid // 2))
    elif room is not None:
        torch.cuda.empty_cache()
        free = torch.cuda.mem_get_info(ctx.device)[0]
        taken = allocated(ctx.device) - base  # the model and the data: part of ``room``
        ballast = torch.empty(free - (room - taken), dtype=torch.uint8, device=ctx.device)
    reset_peak(ctx.device)
    peak = TrainPeak(ctx.device)
    learn.fit(1, lr=1e-2, cbs=[peak])
    held = allocated(ctx.device) - base - (ballast.numel() if ballast is not None else 0)
    weights = {k: v.detach().float().cpu() for k, v in learn.model.state_dict().items()}
    return SimpleNamespace(
        weights=weights,
        valid_loss=learn.recorder.rows[-1]["valid_loss"],
        levers=learn.memory.levers(),
        ooms=[e for e in learn.oom_events if e.get("phase") == "train"],
        eval_bs=learn.eval_bs,
        peak=peak.peak - base,
        held=held,
    )


def max_diff(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a if a[k].numel())


def check_oom(ctx: Ctx) -> list[Row]:
    """3. A real OOM: recovery, the same weights and validation, nothing leaked."""
    s = oom_setup(ctx)
    cudnn = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        half = oom_fit(ctx, s, s.micro // 2)  # the fallback setting, from the start
        ctx.clean()
        # room: the half micro-batch's peak plus half the plan's step up to the full one
        model = new_model(s.arch, ctx.device, 10)
        plan = make_plan(model, bs=s.micro, size=s.size, budget=HUGE, precisions=("fp32",),
                         opt="sgd", probe_device=ctx.device)  # fmt: skip
        del model
        peaks = {c.micro_bs: c.peak for c in plan.candidates if not c.checkpointing}
        room = int(half.peak + (peaks[s.micro] - peaks[s.micro // 2]) / 2)
        ctx.clean()
        hit = oom_fit(ctx, s, s.micro, room=room)
        ref = half
        if hit.levers != half.levers:  # it fell back further: compare with that setting
            ctx.clean()
            ref = oom_fit(ctx, s, hit.levers["micro_bs"])
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn
    settled = f"settled at {hit.levers}; room {room / MiB:.0f} MiB"
    valid_note = f"chunks of {hit.eval_bs} (of {s.n_valid})"
    return [
        ctx.row("oom", "training OOMs recovered", len(hit.ooms), "", Goal(">=", 1), settled),
        ctx.row("oom", "max |w - w_fallback|", max_diff(hit.weights, ref.weights), "",
                Goal("<=", 1e-5)),
        ctx.row("oom", "validation chunk < batch", int((hit.eval_bs or s.n_valid) < s.n_valid),
                "", Goal("==", 1), valid_note),
        ctx.row("oom", "|valid loss - reference|", abs(hit.valid_loss - ref.valid_loss), "",
                Goal("<=", 1e-5)),
        ctx.row("oom", "memory held after vs reference", (hit.held - ref.held) / MiB, "MiB",
                Goal("<=", 1.0, abs_value=True), "nothing pinned by the failed step"),
    ]  # fmt: skip


# --------------------------------------------------------------------------- 4. speed


def speed_setup(ctx: Ctx) -> SimpleNamespace:
    if ctx.dry:
        return SimpleNamespace(arch="test_resnet", size=64, bs=8, steps=3, rounds=1, n_img=32)
    if ctx.quick:
        return SimpleNamespace(arch="resnet50", size=224, bs=128, steps=15, rounds=2, n_img=512)
    return SimpleNamespace(arch="resnet50", size=224, bs=128, steps=30, rounds=3, n_img=1024)


def loader_host_rate(ctx: Ctx, s) -> float:
    """Images/s of the host's share of a warm epoch (cached uint8 pixels into batches),
    over a folder of synthetic JPEGs (`data.host_rate`)."""
    import numpy as np
    from PIL import Image

    from data import epoch_rate, host_rate
    from snugfit.data.loaders import ImageDataLoaders

    rng = np.random.default_rng(0)
    side = max(64, s.size * 5 // 4)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        for split, n in (("train", s.n_img), ("val", 8)):
            for k in range(n):
                d = root / split / f"c{k % 2}"
                d.mkdir(parents=True, exist_ok=True)
                pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(d / f"{k}.jpg", quality=90)
        workers = 0 if ctx.dry else 8
        dls = ImageDataLoaders.from_folder(
            root, cache_root=Path(tmp) / "cache", size=s.size, bs=32, num_workers=workers,
            device=ctx.device, console=quiet(),
        )  # fmt: skip
        epoch_rate(dls.train)  # cold: decode into the cache
        epoch_rate(dls.train)  # warm
        rate = host_rate(dls.train)
        dls.close()
    return rate


def check_speed(ctx: Ctx) -> list[Row]:
    """4. snugfit vs a hand-written loop; compile's gain; the loader against training."""
    from gpu import run_hand, run_snugfit

    s = speed_setup(ctx)
    dls = synthetic_dls(s.steps, s.bs, s.size, 1000, ctx.device)
    torch.manual_seed(0)
    base = timm.create_model(s.arch, pretrained=False).to(
        ctx.device, memory_format=torch.channels_last
    )
    hand, snug = [], []
    for _ in range(s.rounds):  # alternate, keep each loop's best round
        hand.append(run_hand(base, dls, False, ctx.device, "bf16")[0])
        snug.append(run_snugfit(base, dls, False, ctx.device, "bf16")[0])
    where = f"{s.arch} @ {s.size}, bs {s.bs}, bf16, channels_last"
    rows = [
        ctx.row("speed", "hand-written images/s", max(hand), "img/s", note=where),
        ctx.row("speed", "snugfit images/s", max(snug), "img/s"),
        ctx.row("speed", "snugfit / hand-written", max(snug) / max(hand), "x", Goal(">=", 0.98)),
    ]
    if ctx.dry or ctx.quick:
        note = "skipped: compiling takes about a minute (full run only)"
        rows.append(ctx.row("speed", "compile=True gain (snugfit)", None, "x", note=note))
    else:
        compiled = run_snugfit(base, dls, True, ctx.device, "bf16")[0]
        gain = compiled / max(snug)
        rows.append(ctx.row("speed", "compile=True gain (snugfit)", gain, "x", Goal(">=", 1.0)))
    del base, dls
    ctx.clean()
    host = loader_host_rate(ctx, s)
    rows += [
        ctx.row("speed", "loader warm host-side images/s", host, "img/s", note="synthetic JPEGs"),
        ctx.row("speed", "loader host rate / training rate", host / max(snug), "x",
                Goal(">=", 1.0)),
    ]  # fmt: skip
    return rows


# --------------------------------------------------------------------------- 5. paths


class PoisonAndWitness(Callback):
    """Turn the loss at optimizer step ``step`` into NaN; keep each epoch's weights."""

    order = 95

    def __init__(self, step: int):
        self.step, self.epochs = step, []

    def after_loss(self, learn):
        if learn.train_iter == self.step:
            learn.loss_mb = learn.loss_mb * float("nan")

    def after_epoch(self, learn):
        self.epochs.append({k: v.detach().clone() for k, v in learn.model.state_dict().items()})


def nan_rows(ctx: Ctx) -> list[Row]:
    """The lagged NaN check (on by itself on CUDA; forced on the CPU) stops at the
    poisoned step with the weights of the end of the epoch before."""
    arch, size = ("test_resnet", 32) if ctx.dry else ("resnet18", 64)
    dls = synthetic_dls(3, 16, size, 10, ctx.device)
    learn = Learner(dls, new_model(arch, ctx.device, 10), precision="fp32", console=quiet())
    learn.unfreeze()
    learn.evaluate = lambda dl: (0.0, {})
    if ctx.dry:
        learn.nonfinite.lagged = True  # as on CUDA
    step, cb = 4, PoisonAndWitness(4)  # epoch 1, batch 1
    stopped = None
    try:
        learn.fit(3, lr=1e-3, cbs=[cb])
    except NonFiniteLoss as e:
        stopped = e.where.step
    now = learn.model.state_dict()
    diff = max((now[k].float() - v.float()).abs().max().item() for k, v in cb.epochs[0].items())
    return [
        ctx.row("paths", "NaN stop: step", stopped, "", Goal("==", step), "poisoned step 4"),
        ctx.row("paths", "NaN stop: max |w - w_epoch0|", diff, "", Goal("<=", 0.0)),
    ]


def predict_rows(ctx: Ctx) -> list[Row]:
    """predict's batch from a budget, and the peak of a prediction batch of that size."""
    from snugfit.data.augment import center_batch
    from snugfit.infer.predict import predict_batch_size

    arch, size, budget = ("test_resnet", 64, "256MB") if ctx.dry else ("resnet50", 224, "2GB")
    dls = synthetic_dls(1, 2, size, 10, ctx.device)
    learn = Learner(dls, new_model(arch, ctx.device, 10), console=quiet())
    bs, why = predict_batch_size(learn, budget)
    pre = learn.preprocessing
    ctx.clean()
    reset_peak(ctx.device)
    x = torch.randint(0, 256, (bs, 3, size, size), dtype=torch.uint8, device=ctx.device)
    with torch.no_grad():
        learn.eval_outputs(center_batch(x, pre.size, pre.mean, pre.std))
    sync(ctx.device)
    room = parse_bytes(budget) - (512 * MiB if ctx.device.type == "cuda" else 0)
    peak = peak_bytes(ctx.device)
    note = f"{peak / MiB:.0f} MiB of {room / MiB:.0f} MiB" + (" (stand-in)" if ctx.dry else "")
    return [
        ctx.row("paths", f"predict batch ({arch} @ {size}, {budget})", bs, "", Goal(">=", 2), why),
        ctx.row("paths", "predict peak / budget", peak / room, "", Goal("<=", 1.0), note),
    ]


def solve_rows(ctx: Ctx) -> list[Row]:
    """The head solved on the device (auto_fit's frozen-body route: L-BFGS on the
    stored features, `snugfit.train.head_solve`) predicts as the CPU's solution does."""
    from snugfit.train.head_solve import solve_linear

    n, d, c = (600, 64, 5) if ctx.dry else (20_000, 1280, 10)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    y = (x @ torch.randn(d, c, generator=g) + torch.randn(n, c, generator=g)).argmax(1)
    start = time.perf_counter()
    w_dev, b_dev, _ = solve_linear(x, y, c, multi_label=False, device=ctx.device)
    sync(ctx.device)
    seconds = time.perf_counter() - start
    w_cpu, b_cpu, _ = solve_linear(x, y, c, multi_label=False)
    on_dev = (x @ w_dev.cpu().t() + b_dev.cpu()).argmax(1)
    agree = (on_dev == (x @ w_cpu.t() + b_cpu).argmax(1)).float().mean().item()
    note = f"{n} x {d} features, {c} classes: {seconds:.2f} s on {ctx.device.type}"
    return [ctx.row("paths", "solved head: predictions as the CPU's", agree, "", Goal(">=", 0.99),
                    note)]  # fmt: skip


def check_paths(ctx: Ctx) -> list[Row]:
    """5. GPU-only paths: the lagged NaN check, predict's batch sizing, the head
    solved on the device."""
    rows = nan_rows(ctx)
    ctx.clean()
    rows += predict_rows(ctx)
    ctx.clean()
    return rows + solve_rows(ctx)


CHECKS = {
    "plan": check_plan,
    "budget": check_budget,
    "oom": check_oom,
    "speed": check_speed,
    "paths": check_paths,
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="checks (H200 time, full / --quick): plan ~4 min / ~1 min, budget ~1 min, "
        "oom ~30 s, speed ~1.5 min / ~30 s, paths ~20 s",
    )
    p.add_argument("--out", type=Path, help="folder for gpu_check.json")
    p.add_argument("--quick", action="store_true", help="a subset: about 3 minutes")
    p.add_argument("--dry-run", action="store_true", help="on the CPU, tiny models, no figures")
    p.add_argument("--checks", nargs="+", choices=list(CHECKS), default=list(CHECKS))
    return p.parse_args(argv)


def main(argv=None) -> list[Row]:
    args = parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("gpu_check.py needs a CUDA device; --dry-run runs it on the CPU")
    # an indexed device: set_per_process_memory_fraction refuses a bare "cuda"
    device = (
        torch.device("cpu") if args.dry_run else torch.device("cuda", torch.cuda.current_device())
    )
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    console = Console(width=160, file=sys.stdout)
    meta = {
        "mode": "dry-run" if args.dry_run else ("quick" if args.quick else "full"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    console.print(meta)
    ctx = Ctx(device, args.dry_run, args.quick, console)
    out = args.out / "gpu_check.json" if args.out else None
    rows = run_checks(ctx, {name: CHECKS[name] for name in args.checks}, meta, out)
    failed = [r for r in rows if r.passed is False]
    console.print(f"{len(rows)} rows, {len(failed)} failed" + (f"; json: {out}" if out else ""))
    return rows


if __name__ == "__main__":
    main()
