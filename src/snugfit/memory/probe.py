"""Measuring a model's memory: what a training forward saves for backward, what a
no-grad forward keeps alive, and the bytes that do not depend on the batch.

Activations are measured, not guessed: `saved_tensor_bytes` runs one forward pass
under ``torch.autograd.graph.saved_tensors_hooks`` and counts the storages autograd
keeps for backward. Two probes (micro-batch 1 and 2) give a line ``fixed + per_sample
* n`` (`ActivationProfile`). The probe runs on the real model with its current
``requires_grad`` flags, so frozen layers cost what they really cost: nothing, when
nothing before them needs a gradient. It runs on any device (the CPU by default), so
the planner also answers what-if questions about a GPU one does not have.
"""

from __future__ import annotations

import contextlib
import math
import os
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from snugfit.errors import SnugfitError
from snugfit.memory.precision import autocast, check_precision
from snugfit.models.checkpointing import checkpoint_units, model_stages
from snugfit.sizes import Size, as_hw, check_size

# Optimizer state as a multiple of the trainable parameters' bytes.
OPT_STATE = {"adamw": 2, "sgd": 1, "rmsprop": 1}  # Adam: exp_avg + exp_avg_sq; SGD: momentum


@dataclass
class SavedBytes:
    """What one forward pass saved for backward.

    Attributes:
        total: Bytes of the unique storages saved (parameters and buffers excluded).
        per_stage: For each stage, the bytes first saved while it ran and not saved
            again outside every stage: what checkpointing the stage would drop.
        stage_inputs: For each stage, the bytes of its input tensor(s).
    """

    total: int
    per_stage: list[int]
    stage_inputs: list[int]


def _tensor_bytes(obj) -> int:
    if isinstance(obj, Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (tuple, list)):
        return sum(_tensor_bytes(o) for o in obj)
    return 0


def saved_tensor_bytes(
    model: nn.Module,
    x: Tensor,
    *,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    stages: Sequence[nn.Module] | None = None,
) -> SavedBytes:
    """Count the bytes autograd saves for backward during one training forward of ``model(x)``.

    Each storage is counted once, however many saved tensors view it, and the model's
    parameters and buffers are not counted (`static_bytes` has them). The model runs
    in train mode (dropout, batch statistics) with its own ``requires_grad`` flags;
    its train/eval flags and buffers (BatchNorm running stats) are restored after.

    Args:
        model: The model, on ``x``'s device.
        x: An input batch.
        autocast: A zero-argument callable returning the context the forward runs in,
            e.g. ``lambda: torch.autocast("cpu", dtype=torch.bfloat16)``.
        stages: Modules to attribute saved bytes to (default: `model_stages`).

    Returns:
        The total and per-stage saved bytes, and each stage's input bytes.
    """
    stages = model_stages(model) if stages is None else list(stages)
    static = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    # Holding the saved tensors keeps their storages alive, so a freed pointer is
    # not reused by a later tensor and miscounted as already seen.
    seen: dict[int, Tensor] = {}
    count = [0]
    per_stage = [0] * len(stages)
    stage_inputs = [0] * len(stages)
    started: dict[int, int] = {}
    owner: dict[int, int] = {}  # storage -> the stage that first saved it

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in static:
            return t
        if ptr not in seen:
            seen[ptr] = t
            count[0] += storage.nbytes()
            if started:
                owner[ptr] = next(reversed(started))
        elif not started and ptr in owner:
            # A stage's output saved again outside the stages (a decoder's output by the
            # head): checkpointing the stage keeps it all the same, so it counts outside.
            per_stage[owner.pop(ptr)] -= storage.nbytes()
        return t

    def pre_hook(i: int):
        def hook(module, args):
            started[i] = count[0]
            stage_inputs[i] += _tensor_bytes(args)

        return hook

    def post_hook(i: int):
        def hook(module, args, output):
            per_stage[i] += count[0] - started.pop(i)

        return hook

    handles = []
    for i, stage in enumerate(stages):
        handles.append(stage.register_forward_pre_hook(pre_hook(i)))
        handles.append(stage.register_forward_hook(post_hook(i)))
    try:
        hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        with _in_train_mode(model), torch.enable_grad(), hooks, autocast():
            out = model(x)
        total = count[0]
        del out
    finally:
        for h in handles:
            h.remove()
        seen.clear()
    return SavedBytes(total, per_stage, stage_inputs)


@contextlib.contextmanager
def _in_train_mode(model: nn.Module):
    """Run in train mode, then put back the train/eval flags and the buffers (BatchNorm
    running stats) as they were."""
    modes = {m: m.training for m in model.modules()}
    buffers = [b.detach().clone() for b in model.buffers()]
    try:
        model.train()
        yield
    finally:
        for m, training in modes.items():
            m.training = training
        with torch.no_grad():
            for b, saved in zip(model.buffers(), buffers, strict=True):
                b.copy_(saved)


# --------------------------------------------------------------------------- profiles


@dataclass
class ActivationProfile:
    """Saved activations as a line in the micro-batch size: ``fixed + per_sample * n`` bytes.

    Attributes:
        fixed: Bytes that do not grow with the batch (e.g. autocast's 16-bit weight copies).
        per_sample: Bytes per sample.
        stage_per_sample: Per-sample bytes saved inside each checkpointed block
            (`checkpoint_units`: the blocks of the `model_stages`).
        stage_input_per_sample: Per-sample bytes of each such block's input.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``.
    """

    fixed: float
    per_sample: float
    stage_per_sample: list[float] = field(default_factory=list)
    stage_input_per_sample: list[float] = field(default_factory=list)
    precision: str = "fp32"
    probed_at: Size | None = None  # measured at this smaller size and scaled by area

    def scaled(self, factor: float, probed_at: Size) -> ActivationProfile:
        """This profile for an input ``factor`` times the area (per-sample bytes grow
        with the pixels; the fixed bytes do not)."""
        return ActivationProfile(
            fixed=self.fixed,
            per_sample=self.per_sample * factor,
            stage_per_sample=[x * factor for x in self.stage_per_sample],
            stage_input_per_sample=[x * factor for x in self.stage_input_per_sample],
            precision=self.precision,
            probed_at=probed_at,
        )


def autocast_for(
    precision: str, device_type: str
) -> Callable[[], contextlib.AbstractContextManager]:
    """The autocast context factory for a precision on a device type: the one rule of
    `snugfit.memory.precision.autocast`, as training uses it.

    (Probing fp16 on the CPU for a CUDA budget is faithful: with torch 2.14, CPU
    float16 and bfloat16 autocast save the same bytes for resnet18, efficientnet_b0,
    vit_tiny and convnext_atto.)
    """
    check_precision(precision, allow_auto=False)
    return lambda: autocast(precision, device_type)


@contextlib.contextmanager
def _on_device(model: nn.Module, device: torch.device):
    """Run with the model on ``device``, moving it there and back if it lives elsewhere."""
    param = next(model.parameters(), None)
    home = param.device if param is not None else device
    if home == device:
        yield
        return
    model.to(device)
    try:
        yield
    finally:
        model.to(home)


def _probe_setup(size: Size, precision: str, channels_last: bool, device):
    """What a memory probe needs: the device, its autocast context factory, and
    ``inputs(n)``, random ``(n, 3, height, width)`` images in the model's memory format."""
    check_precision(precision, allow_auto=False)
    device = torch.device(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def inputs(n: int) -> torch.Tensor:
        h, w = as_hw(size)
        return torch.randn(n, 3, h, w, device=device).to(memory_format=memory_format)

    return device, autocast_for(precision, device.type), inputs


PROBE_PIXELS = 512 * 512  # larger inputs are first probed at about this area


def profile_activations(
    model: nn.Module,
    size: Size,
    *,
    precision: str = "fp32",
    channels_last: bool = False,
    device: str | torch.device = "cpu",
    room: int | None = None,
) -> ActivationProfile:
    """Measure saved activations at micro-batch 1 and 2 and fit a line (`measure`).

    An input of more than `PROBE_PIXELS` pixels (1400x2100 is 2.9 million) is first
    measured at a smaller size of the same aspect (sides multiples of 32). When the
    probe at the full size would need more memory than ``room`` (default: half what
    the probe device has free), the profile is the small one scaled by the ratio of
    the areas: the activations of a convolutional network grow with its pixels (for a
    UNet on resnet18, 128x192 measured against 64x96 scaled: within 1%). The profile
    then names the size it was measured at (``probed_at``). Otherwise the full size
    is measured.
    """
    h, w = as_hw(size)
    kw = {"precision": precision, "channels_last": channels_last, "device": device}
    if h * w <= PROBE_PIXELS:
        return measure(model, size, **kw)
    f = math.sqrt(PROBE_PIXELS / (h * w))
    small = check_size("size", (max(32, round(h * f / 32) * 32), max(32, round(w * f / 32) * 32)))
    profile = measure(model, small, **kw)
    factor = h * w / math.prod(as_hw(small))
    need = 2 * (profile.fixed + 2 * profile.per_sample * factor)  # batch 2, and temporaries
    if need <= (free_bytes(device) // 2 if room is None else room):
        return measure(model, size, **kw)
    return profile.scaled(factor, small)


def free_bytes(device: str | torch.device) -> int:
    """Memory the device has free now (host memory for the CPU; 0 when unknown)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def measure(
    model: nn.Module,
    size: Size,
    *,
    precision: str = "fp32",
    channels_last: bool = False,
    device: str | torch.device = "cpu",
) -> ActivationProfile:
    """Measure saved activations at micro-batch 1 and 2 at ``size`` and fit a line.

    A model that cannot train on a single sample (train-mode BatchNorm over one value
    per channel) is probed at 2 and 4 instead.

    Inputs are random ``(n, 3, height, width)`` images on ``device``. A model that lives
    on another device is moved there for the probe and back. The global RNG state is
    left as it was (dropout draws from a forked one).

    Args:
        model: The model, with the ``requires_grad`` flags it will train with.
        size: Image size: a side or ``(height, width)``, in pixels.
        precision: ``"fp32"``, or ``"bf16"``/``"fp16"`` for autocast (bfloat16 on the CPU).
        channels_last: Give the inputs NHWC memory format.
        device: Where the probe runs.
    """
    device, autocast, inputs = _probe_setup(size, precision, channels_last, device)
    # Profile per checkpointed block, so that the checkpointed prediction keeps the
    # inputs checkpointing really keeps and recomputes the block it really recomputes.
    stages = checkpoint_units(model)

    def probe(n: int) -> SavedBytes:
        return saved_tensor_bytes(model, inputs(n), autocast=autocast, stages=stages)

    rng_devices = [device] if device.type == "cuda" else []
    with _on_device(model, device), torch.random.fork_rng(devices=rng_devices):
        try:
            a, b = 1, 2
            sa, sb = probe(a), probe(b)
        except ValueError:
            # Train-mode BatchNorm over a single value per channel (a 1-d norm in a
            # head, or a 1x1 feature map) refuses a batch of one: probe at 2 and 4.
            a, b = 2, 4
            sa, sb = probe(a), probe(b)

    def slope(x: float, y: float) -> float:
        return (y - x) / (b - a)

    per_sample = slope(sa.total, sb.total)
    return ActivationProfile(
        fixed=max(0.0, sa.total - a * per_sample),
        per_sample=per_sample,
        stage_per_sample=[slope(x, y) for x, y in zip(sa.per_stage, sb.per_stage, strict=True)],
        stage_input_per_sample=[
            slope(x, y) for x, y in zip(sa.stage_inputs, sb.stage_inputs, strict=True)
        ],
        precision=precision,
    )


def activation_bytes(
    profile: ActivationProfile, micro_bs: int, checkpointing: bool = False
) -> float:
    """Predicted saved-activation bytes at micro-batch ``micro_bs``.

    With checkpointing (predicted from the un-checkpointed profile), what stays saved
    is everything outside the stages plus each stage's input, and during backward one
    stage at a time is recomputed, so the largest stage's activations come back.
    A stage that saves nothing (frozen, its input needing no gradient) keeps no
    input either: checkpointing it changes nothing.
    """
    if not checkpointing:
        return profile.fixed + profile.per_sample * micro_bs
    inside = sum(profile.stage_per_sample)
    inputs = sum(
        inp
        for inp, act in zip(profile.stage_input_per_sample, profile.stage_per_sample, strict=True)
        if act > 0
    )
    kept = profile.per_sample - inside + inputs
    recomputed = max(profile.stage_per_sample, default=0.0)
    return profile.fixed + micro_bs * (kept + recomputed)


def static_bytes(model: nn.Module, opt: str = "adamw") -> dict[str, int]:
    """Bytes that do not depend on the batch: parameters, gradients, optimizer state, buffers.

    Only trainable parameters (``requires_grad``) get gradients and optimizer state.

    Returns:
        ``{"params", "grads", "opt_state", "buffers"}`` in bytes.
    """
    name = opt.lower()
    if name not in OPT_STATE:
        raise SnugfitError(f"opt: unknown optimizer {opt!r}; choose one of {', '.join(OPT_STATE)}")
    params = trainable = 0
    for p in model.parameters():
        n = p.numel() * p.element_size()
        params += n
        trainable += n if p.requires_grad else 0
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    return {
        "params": params,
        "grads": trainable,
        "opt_state": OPT_STATE[name] * trainable,
        "buffers": buffers,
    }


def forward_peak_bytes(
    model: nn.Module,
    x: Tensor,
    *,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> int:
    """Peak bytes of the tensors alive at once during one ``no_grad`` forward of ``model(x)``.

    Without a graph nothing is saved for backward: what counts is how many
    intermediate results are alive together (a residual branch keeps its input
    while the block runs). Every op's outputs are seen through a
    ``TorchDispatchMode`` and counted until the last tensor on their storage dies;
    the model's parameters and buffers and ``x`` itself are not counted.

    >>> m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    >>> forward_peak_bytes(m, torch.randn(2, 8))  # 2 x 16 floats before ReLU, 2 x 16 after
    256
    """
    static = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers(), x)}
    live: dict[int, list[int]] = {}  # storage pointer -> [tensors alive, bytes]
    count = {"now": 0, "peak": 0}

    def release(ptr: int) -> None:
        entry = live[ptr]
        entry[0] -= 1
        if entry[0] == 0:
            del live[ptr]
            count["now"] -= entry[1]

    class Track(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if not isinstance(t, Tensor):
                    continue
                storage = t.untyped_storage()
                ptr = storage.data_ptr()
                if ptr == 0 or ptr in static:
                    continue
                if ptr not in live:
                    live[ptr] = [0, storage.nbytes()]
                    count["now"] += storage.nbytes()
                    count["peak"] = max(count["peak"], count["now"])
                live[ptr][0] += 1
                weakref.finalize(t, release, ptr)  # in-place ops return t again: +1, -1
            return out

    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad(), autocast(), Track():
            out = model(x)
        del out
    finally:
        for m, training in modes.items():
            m.training = training
    return count["peak"]


def profile_eval(
    model: nn.Module,
    size: Size,
    *,
    precision: str = "fp32",
    channels_last: bool = False,
    device: str | torch.device = "cpu",
) -> ActivationProfile:
    """`forward_peak_bytes` at batch 1 and 2 as a line ``fixed + per_sample * n``."""
    device, autocast, inputs = _probe_setup(size, precision, channels_last, device)

    def probe(n: int) -> int:
        return forward_peak_bytes(model, inputs(n), autocast=autocast)

    with _on_device(model, device):
        a, b = probe(1), probe(2)
    per_sample = float(max(0, b - a))
    return ActivationProfile(
        fixed=max(0.0, a - per_sample), per_sample=per_sample, precision=precision
    )
