"""The memory planner: predict a training step's peak memory and pick a configuration that fits.

Peak memory during training is (see ``shared/guides/memory.md``)::

    params + grads + optimizer state + buffers        exact, from the model (`static_bytes`)
    + activations saved for backward x micro-batch    measured by a probe (`profile_activations`)
    + the input batch + a margin for backward          rules of thumb (`make_plan`)

Activations are measured, not guessed: `saved_tensor_bytes` runs one forward pass
under ``torch.autograd.graph.saved_tensors_hooks`` and counts the storages autograd
keeps for backward. Two probes (micro-batch 1 and 2) give a line ``fixed + per_sample
* n`` (`ActivationProfile`). The probe runs on the real model with its current
``requires_grad`` flags, so frozen layers cost what they really cost: nothing, when
nothing before them needs a gradient. It runs on any device (the CPU by default), so
the planner also answers what-if questions about a GPU one does not have.

`make_plan` then enumerates precision x activation checkpointing x micro-batch,
predicts each candidate's peak and picks the fastest that fits the budget:

>>> import timm
>>> model = timm.create_model("resnet18", pretrained=False)
>>> plan = make_plan(model, bs=32, size=224, budget=parse_bytes("4GB"))  # doctest: +SKIP
>>> print(plan.summary())  # doctest: +SKIP
plan: bf16, micro-batch 32 x 1 steps, checkpointing off, predicted peak 708.4 MiB of 3.23 GiB (...)
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from rich.table import Table
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from snugfit.errors import SnugfitError

__all__ = [
    "ActivationProfile",
    "Candidate",
    "MemoryPlan",
    "SavedBytes",
    "activation_bytes",
    "autocast_for",
    "checkpoint_units",
    "eval_batch_size",
    "format_bytes",
    "forward_peak_bytes",
    "make_plan",
    "micro_batches",
    "model_stages",
    "parse_bytes",
    "profile_activations",
    "profile_eval",
    "saved_tensor_bytes",
    "set_grad_checkpointing",
    "static_bytes",
]

MiB = 2**20
GiB = 2**30
PRECISIONS = ("fp32", "bf16", "fp16")

# Optimizer state as a multiple of the trainable parameters' bytes.
_OPT_STATE = {"adamw": 2, "sgd": 1, "rmsprop": 1}  # Adam: exp_avg + exp_avg_sq; SGD: momentum

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_BYTES_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)(?:e([+-]?\d+))?\s*([kmgt]?i?b)?\s*$", re.I)


# --------------------------------------------------------------------------- sizes


def parse_bytes(value: str | int | float, total: int | None = None, name: str = "budget") -> int:
    """Read a memory size: ``"8GB"`` (SI), ``"8GiB"`` (binary), bytes, or a fraction.

    >>> parse_bytes("8GB"), parse_bytes("512 MiB"), parse_bytes(4096)
    (8000000000, 536870912, 4096)
    >>> parse_bytes(0.5, total=16 * 2**30)
    8589934592

    Args:
        value: A string with an optional unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB;
            case-insensitive, spaces allowed), an int number of bytes, or a float or
            unitless string in (0, 1]: that fraction of ``total``.
        total: The device's memory in bytes, needed for a fraction.
        name: The argument's name, for the error message.

    Raises:
        SnugfitError: If the value cannot be read, is not positive, or is a fraction
            without ``total``.
    """
    bad = SnugfitError(
        f"{name}: cannot read {value!r}; use e.g. 8GB, 8GiB, 7500MB or a fraction like 0.5 "
        "of the device"
    )
    fraction: float | None = None
    if isinstance(value, bool):
        raise bad
    if isinstance(value, int):
        n = float(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise bad
        if 0 < value <= 1:
            fraction = value
        elif value != int(value):
            raise bad
        n = value
    elif isinstance(value, str):
        match = _BYTES_RE.match(value)
        if not match:
            raise bad
        number, exponent, unit = match.groups()
        n = float(number) * 10 ** int(exponent or 0)
        unit = (unit or "").lower()
        if unit not in _UNITS:
            raise bad
        if not unit and 0 < n <= 1:
            fraction = n
        elif not unit and n != int(n):
            raise bad  # "1.5": neither a fraction nor a whole number of bytes (1.5GB?)
        n *= _UNITS[unit]
    else:
        raise bad
    if fraction is not None:
        if total is None:
            raise SnugfitError(
                f"{name}: the fraction {value!r} needs the device's total memory; "
                "give a size instead, e.g. 8GB or 8GiB"
            )
        return int(fraction * total)
    if n < 1:
        raise bad
    return round(n)


def format_bytes(n: float) -> str:
    """A size for people: ``"1.23 GiB"``, ``"512.0 MiB"``, ``"3.0 KiB"``, ``"12 B"``."""
    sign = "-" if n < 0 else ""
    n = abs(n)
    if n >= GiB:
        return f"{sign}{n / GiB:.2f} GiB"
    if n >= MiB:
        return f"{sign}{n / MiB:.1f} MiB"
    if n >= 2**10:
        return f"{sign}{n / 2**10:.1f} KiB"
    return f"{sign}{n:.0f} B"


# --------------------------------------------------------------------------- stages and checkpointing


def model_stages(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a network, over which activation checkpointing works.

    timm models: the children of ``model.blocks`` (EfficientNet stages, ViT blocks),
    ``model.stages`` (ConvNeXt) or ``model.layers``, or ``[layer1, ..., layer4]``
    (ResNet). Other models: the children of their largest ``nn.Sequential`` or
    ``nn.ModuleList`` by parameter count. Returns ``[]`` when there is none.
    """
    for attr in ("blocks", "stages", "layers"):
        seq = getattr(model, attr, None)
        if isinstance(seq, (nn.Sequential, nn.ModuleList)) and len(seq) > 0:
            return list(seq)
    layers = [getattr(model, f"layer{i}", None) for i in range(1, 5)]
    layers = [m for m in layers if isinstance(m, nn.Module)]
    if layers:
        return layers

    def size(m: nn.Module) -> tuple[int, int]:
        # Ties (a Sequential wrapping one Sequential) go to the one with more children.
        return sum(p.numel() for p in m.parameters()), len(m)

    containers = [m for m in model.modules() if isinstance(m, (nn.Sequential, nn.ModuleList))]
    containers = [m for m in containers if len(m) > 0]
    return list(max(containers, key=size)) if containers else []


def checkpoint_units(model: nn.Module) -> list[nn.Module]:
    """The modules activation checkpointing recomputes one at a time: the blocks of each stage.

    timm checkpoints block by block (``checkpoint_seq(..., flatten=True)`` over ResNet
    layers and EfficientNet stages, each ViT block, each block of a ConvNeXt stage), and
    the generic fallback checkpoints each child of a stage; so the units are the
    children of stages that are containers, the ``blocks`` of stages that have them,
    and otherwise the stages themselves.
    """
    units: list[nn.Module] = []
    for stage in model_stages(model):
        blocks = getattr(stage, "blocks", None)
        if isinstance(stage, (nn.Sequential, nn.ModuleList)) and len(stage) > 0:
            units.extend(stage)
        elif isinstance(blocks, (nn.Sequential, nn.ModuleList)) and len(blocks) > 0:
            units.extend(blocks)
        else:
            units.append(stage)
    return units


class _CheckpointedSequential(nn.Sequential):
    """An ``nn.Sequential`` that recomputes each child's activations during backward.

    Set as the ``__class__`` of an existing ``nn.Sequential`` by `set_grad_checkpointing`:
    the module keeps its children and state-dict keys, only ``forward`` changes.
    """

    def forward(self, input):
        for module in self:
            if torch.is_grad_enabled():
                # Non-reentrant: works with frozen inputs and keyword args, and is the
                # variant PyTorch recommends. BatchNorm running stats update twice.
                input = checkpoint(module, input, use_reentrant=False)
            else:
                input = module(input)
        return input


def set_grad_checkpointing(model: nn.Module, enable: bool = True) -> str:
    """Turn activation checkpointing on or off.

    Uses timm's ``model.set_grad_checkpointing`` when the model has it. Otherwise every
    stage (`model_stages`) that is a plain ``nn.Sequential`` gets its class swapped
    to one that checkpoints each child; disabling swaps it back.

    Returns:
        ``"timm"``, ``"generic"``, or ``"none"`` when neither applies.
    """
    if hasattr(model, "set_grad_checkpointing"):
        try:
            model.set_grad_checkpointing(enable)
            return "timm"
        except (AssertionError, NotImplementedError):
            pass  # some timm models declare it but do not support it
    swap = (nn.Sequential, _CheckpointedSequential) if enable else (_CheckpointedSequential,)
    # Only exact nn.Sequential: swapping a subclass's class would drop its own forward.
    stages = [s for s in model_stages(model) if type(s) in swap]
    for stage in stages:
        stage.__class__ = _CheckpointedSequential if enable else nn.Sequential
    return "generic" if stages else "none"


# --------------------------------------------------------------------------- counting


@dataclass
class SavedBytes:
    """What one forward pass saved for backward.

    Attributes:
        total: Bytes of the unique storages saved (parameters and buffers excluded).
        per_stage: For each stage, the bytes first saved while it ran.
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

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in static and ptr not in seen:
            seen[ptr] = t
            count[0] += storage.nbytes()
        return t

    per_stage = [0] * len(stages)
    stage_inputs = [0] * len(stages)
    started: dict[int, int] = {}

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
    modes = {m: m.training for m in model.modules()}
    buffers = [b.detach().clone() for b in model.buffers()]
    try:
        model.train()
        hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        with torch.enable_grad(), hooks, autocast():
            out = model(x)
        total = count[0]
        del out
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training
        with torch.no_grad():
            for b, saved in zip(model.buffers(), buffers, strict=True):
                b.copy_(saved)
        seen.clear()
    return SavedBytes(total, per_stage, stage_inputs)


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


def autocast_for(
    precision: str, device_type: str
) -> Callable[[], contextlib.AbstractContextManager]:
    """The autocast context factory for a precision on a device type.

    On the CPU both 16-bit precisions use bfloat16 autocast: CPU float16 autocast
    covers fewer ops, and the two save the same bytes where both apply.
    """
    _check_precision(precision)
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" or device_type == "cpu" else torch.float16
    return lambda: torch.autocast(device_type, dtype=dtype)


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise SnugfitError(f"precision: unknown {precision!r}; use one of {', '.join(PRECISIONS)}")


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


def _probe_setup(size: int, precision: str, channels_last: bool, device):
    """What a memory probe needs: the device, its autocast context factory, and
    ``inputs(n)``, random ``(n, 3, size, size)`` images in the model's memory format."""
    _check_precision(precision)
    device = torch.device(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def inputs(n: int) -> torch.Tensor:
        return torch.randn(n, 3, size, size, device=device).to(memory_format=memory_format)

    return device, autocast_for(precision, device.type), inputs


def profile_activations(
    model: nn.Module,
    size: int,
    *,
    precision: str = "fp32",
    channels_last: bool = False,
    device: str | torch.device = "cpu",
) -> ActivationProfile:
    """Measure saved activations at micro-batch 1 and 2 and fit a line.

    A model that cannot train on a single sample (train-mode BatchNorm over one value
    per channel) is probed at 2 and 4 instead.

    Inputs are random ``(n, 3, size, size)`` images on ``device``. A model that lives
    on another device is moved there for the probe and back. The global RNG state is
    left as it was (dropout draws from a forked one).

    Args:
        model: The model, with the ``requires_grad`` flags it will train with.
        size: Image side in pixels.
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
    if name not in _OPT_STATE:
        raise SnugfitError(f"opt: unknown optimizer {opt!r}; choose one of {', '.join(_OPT_STATE)}")
    params = trainable = 0
    for p in model.parameters():
        n = p.numel() * p.element_size()
        params += n
        trainable += n if p.requires_grad else 0
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    return {
        "params": params,
        "grads": trainable,
        "opt_state": _OPT_STATE[name] * trainable,
        "buffers": buffers,
    }


# --------------------------------------------------------------------------- the plan


@dataclass
class Candidate:
    """One configuration and its predicted peak.

    Attributes:
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        checkpointing: Activation checkpointing on.
        micro_bs: Samples per forward/backward.
        accumulate: Micro-batches per optimizer step, ``ceil(bs / micro_bs)``.
        peak: Predicted peak allocated bytes (without memory outside the allocator).
        fits: Whether ``peak`` fits the budget less the reserved bytes.
        speed: Expected speed relative to fp32 without checkpointing at full batch.
    """

    precision: str
    checkpointing: bool
    micro_bs: int
    accumulate: int
    peak: int
    fits: bool
    speed: float

    @property
    def label(self) -> str:
        return f"{self.precision} + ckpt" if self.checkpointing else self.precision


@dataclass
class MemoryPlan:
    """The candidates `make_plan` considered and the one it chose (None if nothing fits)."""

    budget: int
    bs: int
    size: int
    device_type: str
    candidates: list[Candidate]
    chosen: Candidate | None
    static: dict
    profiles: dict[str, ActivationProfile]
    frozen_to: int | None = None
    reserved: int = 0

    def table(self) -> Table:
        """A rich table of the candidates, the chosen one marked with ``▶``."""
        title = (
            f"memory plan: bs {self.bs} at {self.size} px on {self.device_type}, budget "
            f"{format_bytes(self.budget)}"
            + (f" ({format_bytes(self.reserved)} reserved)" if self.reserved else "")
        )
        table = Table(title=title)
        table.add_column("")
        table.add_column("candidate")
        for name in ("micro-batch", "accum steps", "predicted peak", "fits", "rel. speed"):
            table.add_column(name, justify="right")
        for c in self.candidates:
            is_chosen = c is self.chosen
            table.add_row(
                "▶" if is_chosen else "",
                c.label,
                str(c.micro_bs),
                str(c.accumulate),
                format_bytes(c.peak),
                "yes" if c.fits else "no",
                f"{c.speed:.2f}",
                style="bold green" if is_chosen else None,
            )
        return table

    def to_dict(self) -> dict:
        """The plan as plain types: the settings, `summary`, each candidate (with its
        ``label``) and ``chosen``, the chosen candidate's index (None: nothing fits)."""
        return {
            "summary": self.summary(),
            "budget": self.budget,
            "reserved": self.reserved,
            "bs": self.bs,
            "size": self.size,
            "device_type": self.device_type,
            "frozen_to": self.frozen_to,
            "candidates": [{"label": c.label, **asdict(c)} for c in self.candidates],
            "chosen": next((i for i, c in enumerate(self.candidates) if c is self.chosen), None),
        }

    def summary(self) -> str:
        """One line: the chosen configuration and its predicted peak, or what would be needed."""
        available = self.budget - self.reserved
        room = format_bytes(available)
        if self.reserved:
            room += f" ({format_bytes(self.budget)} less {format_bytes(self.reserved)} reserved)"
        frozen = f" (frozen to group {self.frozen_to})" if self.frozen_to else ""
        c = self.chosen
        if c is None:
            if not self.candidates:
                return f"plan: no candidates{frozen}"
            small = min(self.candidates, key=lambda k: k.peak)
            return (
                f"plan: nothing fits in {room}{frozen}; the smallest candidate, {small.label} "
                f"micro-batch {small.micro_bs}, needs {format_bytes(small.peak)}"
            )
        return (
            f"plan: {c.precision}, micro-batch {c.micro_bs} x {c.accumulate} steps, "
            f"checkpointing {'on' if c.checkpointing else 'off'}, "
            f"predicted peak {format_bytes(c.peak)} of {room}{frozen}"
        )


def micro_batches(bs: int) -> list[int]:
    """``bs`` then the powers of two below it, largest first: 24 -> [24, 16, 8, 4, 2, 1]."""
    sizes = [bs]
    p = 1 << (bs.bit_length() - 1)
    if p == bs:
        p //= 2
    while p >= 1:
        sizes.append(p)
        p //= 2
    return sizes


def _speed(precision: str, checkpointing: bool, micro_bs: int, bs: int, device_type: str) -> float:
    """A heuristic speed relative to fp32 without checkpointing at the full batch.

    - 16-bit: x2.0 on CUDA (tensor cores), x1.4 on the CPU (measured: EfficientNet-Lite0
      training with bf16 autocast on an AVX512-BF16 CPU).
    - checkpointing: x0.75 (one extra forward, about +33% time).
    - micro-batch efficiency on CUDA: ``min(1, (m / 32) ** 0.25)`` (small kernels
      underuse the GPU); none on the CPU.
    """
    speed = 1.0
    if precision != "fp32":
        speed *= 1.4 if device_type == "cpu" else 2.0
    if checkpointing:
        speed *= 0.75
    if device_type != "cpu":
        speed *= min(1.0, (micro_bs / 32) ** 0.25) / min(1.0, (bs / 32) ** 0.25)
    return speed


def make_plan(
    model: nn.Module,
    *,
    bs: int,
    size: int,
    budget: int,
    device_type: str = "cuda",
    opt: str = "adamw",
    precisions: Sequence[str] = ("fp32", "bf16"),
    channels_last: bool = False,
    probe_device: str | torch.device = "cpu",
    reserved: int | None = None,
) -> MemoryPlan:
    """Predict the peak of every configuration and choose the fastest that fits.

    Candidates are each precision x checkpointing (off, on) x micro-batch (``bs`` and
    the powers of two below it). The model is probed once per precision on
    ``probe_device``, with its current ``requires_grad`` flags; the checkpointed
    prediction comes from the same probe (`activation_bytes`).

    A candidate's peak is `static_bytes` + activations + the whole input batch on the
    device + a margin for backward. It fits when it is at most ``budget - reserved``.

    Args:
        model: The model as it will train (frozen layers frozen).
        bs: Effective batch size (samples per optimizer step).
        size: Image side in pixels.
        budget: Device memory to plan for, in bytes (see `parse_bytes`).
        device_type: ``"cuda"`` or ``"cpu"``: sets the speed model and ``reserved``.
        opt: ``"adamw"``, ``"sgd"`` or ``"rmsprop"``.
        precisions: Precisions to consider.
        channels_last: Probe with NHWC inputs.
        probe_device: Where the probe runs; the CPU works whatever ``device_type`` is.
        reserved: Bytes used outside PyTorch's allocator (default: 512 MiB for the CUDA
            context on ``"cuda"``, 0 otherwise).

    Raises:
        SnugfitError: On a non-positive ``bs``, ``size`` or ``budget``, or an unknown
            precision or optimizer.
    """
    for name, value in (("bs", bs), ("size", size), ("budget", budget)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SnugfitError(f"{name}: expected a positive integer, got {value!r}")
    for p in precisions:
        _check_precision(p)
    if reserved is None:
        reserved = 512 * MiB if device_type == "cuda" else 0
    static = static_bytes(model, opt)
    fixed_bytes = sum(static.values())
    # The whole batch lives on the device: uint8 presized images plus the augmented floats.
    input_bytes = bs * 3 * size * size * (1 + 4)

    profiles: dict[str, ActivationProfile] = {}
    for p in dict.fromkeys(precisions):
        profiles[p] = profile_activations(
            model, size, precision=p, channels_last=channels_last, device=probe_device
        )

    candidates = []
    for p in dict.fromkeys(precisions):
        for ckpt in (False, True):
            for m in micro_batches(bs):
                act = activation_bytes(profiles[p], m, checkpointing=ckpt)
                # Backward holds activation gradients and kernel workspaces on top of the
                # saved activations: a rule of thumb, 15% of them plus 64 MiB.
                margin = 0.15 * act + 64 * MiB
                peak = int(fixed_bytes + act + input_bytes + margin)
                candidates.append(
                    Candidate(
                        precision=p,
                        checkpointing=ckpt,
                        micro_bs=m,
                        accumulate=math.ceil(bs / m),
                        peak=peak,
                        fits=peak <= budget - reserved,
                        speed=_speed(p, ckpt, m, bs, device_type),
                    )
                )
    fitting = [c for c in candidates if c.fits]
    # Fastest first; on a tie the larger micro-batch, then no checkpointing.
    chosen = max(fitting, key=lambda c: (c.speed, c.micro_bs, not c.checkpointing), default=None)
    return MemoryPlan(
        budget=budget,
        bs=bs,
        size=size,
        device_type=device_type,
        candidates=candidates,
        chosen=chosen,
        static=static,
        profiles=profiles,
        reserved=reserved,
    )


def enforce_budget(budget: str | int | float, device: torch.device | str) -> int | None:
    """Cap this process's CUDA memory at ``budget`` so a small card can be emulated.

    Uses ``torch.cuda.set_per_process_memory_fraction``: the caching allocator then
    raises out-of-memory beyond the budget (only approximately like a real card of
    that size: the CUDA context and fragmentation differ, pytorch#69688). On other
    devices nothing is enforced and None is returned; the budget still drives the plan.

    Returns:
        The budget in bytes on CUDA.
    """
    device = torch.device(device)
    if device.type != "cuda":
        parse_bytes(budget, total=1, name="memory_budget")  # still validate the value
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    total = torch.cuda.get_device_properties(index).total_memory
    nbytes = parse_bytes(budget, total=total, name="memory_budget")
    if nbytes > total:
        raise SnugfitError(
            f"memory_budget: {format_bytes(nbytes)} is more than the card's {format_bytes(total)}"
        )
    torch.cuda.set_per_process_memory_fraction(nbytes / total, index)
    return nbytes


# --------------------------------------------------------------------------- prediction


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
    import weakref

    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

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
    size: int,
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


def eval_batch_size(
    static: int,
    profile: ActivationProfile,
    size: int,
    budget: int,
    *,
    reserved: int = 0,
    max_bs: int = 256,
) -> int:
    """The largest prediction batch (1 to ``max_bs``) whose predicted peak fits ``budget``.

    The peak of a batch of ``n`` is ``static`` (parameters and buffers) + the
    forward's live activations (`profile_eval`) + the batch itself on the device
    (uint8 pixels and the normalised floats) + a margin (15% of the activations
    plus 64 MiB, as in `make_plan`). When not even one image fits the answer is 1
    (the OOM fallback of `Learner._eval_forward` has the last word).

    >>> prof = ActivationProfile(fixed=0, per_sample=10 * MiB)
    >>> eval_batch_size(100 * MiB, prof, 224, budget=2 * GiB, reserved=512 * MiB)
    112
    >>> eval_batch_size(100 * MiB, prof, 224, budget=2 * GiB, max_bs=32)
    32
    """
    input_per_sample = 3 * size * size * (1 + 4)
    room = budget - reserved - static - 1.15 * profile.fixed - 64 * MiB
    per_sample = 1.15 * profile.per_sample + input_per_sample
    return max(1, min(max_bs, math.floor(room / per_sample)))
