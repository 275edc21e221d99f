"""The memory plan: predict a training step's peak and pick a configuration that fits.

Peak memory during training is (see ``shared/guides/memory.md``)::

    params + grads + optimizer state + buffers        exact, from the model (`static_bytes`)
    + activations saved for backward x micro-batch    measured by a probe (`profile_activations`)
    + the input batch + a margin for backward          rules of thumb (`make_plan`)

`make_plan` enumerates precision x activation checkpointing x micro-batch, predicts
each candidate's peak from the probe (`snugfit.memory.probe`) and picks the fastest
that fits the budget:

>>> import timm
>>> model = timm.create_model("resnet18", pretrained=False)
>>> plan = make_plan(model, bs=32, size=224, budget=parse_bytes("4GB"))  # doctest: +SKIP
>>> print(plan.summary())  # doctest: +SKIP
plan: bf16, micro-batch 32 x 1 steps, checkpointing off, predicted peak 708.4 MiB of 3.23 GiB (...)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from rich.table import Table
from torch import nn

from snugfit.errors import SnugfitError
from snugfit.memory.precision import check_precision
from snugfit.memory.probe import (
    ActivationProfile,
    activation_bytes,
    profile_activations,
    static_bytes,
)
from snugfit.memory.units import MiB, format_bytes, parse_bytes
from snugfit.sizes import Size, as_hw, check_size, format_size


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
    size: Size
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
            f"memory plan: bs {self.bs} at {format_size(self.size)} px on {self.device_type}, "
            f"budget "
            f"{format_bytes(self.budget)}"
            + (f" ({format_bytes(self.reserved)} reserved)" if self.reserved else "")
        )
        if self.probed_at is not None:
            title += f"; activations measured at {format_size(self.probed_at)}, scaled by area"
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
            "size": self.size if isinstance(self.size, int) else list(self.size),
            "device_type": self.device_type,
            "probed_at": None if self.probed_at is None else list(as_hw(self.probed_at)),
            "frozen_to": self.frozen_to,
            "candidates": [{"label": c.label, **asdict(c)} for c in self.candidates],
            "chosen": next((i for i, c in enumerate(self.candidates) if c is self.chosen), None),
        }

    @property
    def probed_at(self) -> Size | None:
        """The smaller size the activations were measured at (None: at ``size``)."""
        return next((p.probed_at for p in self.profiles.values() if p.probed_at), None)

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


def _candidate(
    profile: ActivationProfile, ckpt: bool, m: int, bs: int, fixed: int, room: int, device_type: str
) -> Candidate:
    """One configuration: its predicted peak (``fixed`` bytes + activations + a margin),
    whether that fits in ``room``, and its expected speed."""
    act = activation_bytes(profile, m, checkpointing=ckpt)
    # Backward holds activation gradients and kernel workspaces on top of the saved
    # activations: a rule of thumb, 15% of them plus 64 MiB.
    margin = 0.15 * act + 64 * MiB
    peak = int(fixed + act + margin)
    return Candidate(
        precision=profile.precision,
        checkpointing=ckpt,
        micro_bs=m,
        accumulate=math.ceil(bs / m),
        peak=peak,
        fits=peak <= room,
        speed=_speed(profile.precision, ckpt, m, bs, device_type),
    )


def _check_plan_args(bs, size, budget, precisions) -> Size:
    """The size, checked with the batch, the budget and the precisions of a plan."""
    for name, value in (("bs", bs), ("budget", budget)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SnugfitError(f"{name}: expected a positive integer, got {value!r}")
    for p in precisions:
        check_precision(p, allow_auto=False)
    return check_size("size", size)


def make_plan(
    model: nn.Module,
    *,
    bs: int,
    size: Size,
    budget: int,
    device_type: str = "cuda",
    opt: str = "adamw",
    precisions: Sequence[str] = ("fp32", "bf16"),
    channels_last: bool = False,
    probe_device: str | torch.device = "cpu",
    reserved: int | None = None,
    extra_per_sample: int = 0,
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
        size: Image size: a side or ``(height, width)``, in pixels.
        budget: Device memory to plan for, in bytes (see `parse_bytes`).
        device_type: ``"cuda"`` or ``"cpu"``: sets the speed model and ``reserved``.
        opt: ``"adamw"``, ``"sgd"`` or ``"rmsprop"``.
        precisions: Precisions to consider.
        channels_last: Probe with NHWC inputs.
        probe_device: Where the probe runs; the CPU works whatever ``device_type`` is.
        reserved: Bytes used outside PyTorch's allocator (default: 512 MiB for the CUDA
            context on ``"cuda"``, 0 otherwise).
        extra_per_sample: Further bytes per sample on the device besides the uint8 and
            float images (a segmentation mask: its uint8 copy and its int64 targets).

    Raises:
        SnugfitError: On a non-positive ``bs``, ``size`` or ``budget``, or an unknown
            precision or optimizer.
    """
    size = _check_plan_args(bs, size, budget, precisions)
    h, w = as_hw(size)
    if reserved is None:
        reserved = 512 * MiB if device_type == "cuda" else 0
    static = static_bytes(model, opt)
    fixed_bytes = sum(static.values())
    # The whole batch lives on the device: uint8 presized images plus the augmented floats.
    input_bytes = bs * (3 * h * w * (1 + 4) + extra_per_sample)

    profiles: dict[str, ActivationProfile] = {}
    for p in dict.fromkeys(precisions):
        profiles[p] = profile_activations(
            model, size, precision=p, channels_last=channels_last, device=probe_device
        )

    fixed, room = fixed_bytes + input_bytes, budget - reserved
    candidates = [
        _candidate(profiles[p], ckpt, m, bs, fixed, room, device_type)
        for p in dict.fromkeys(precisions)
        for ckpt in (False, True)
        for m in micro_batches(bs)
    ]
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


def eval_batch_size(
    static: int,
    profile: ActivationProfile,
    size: Size,
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

    >>> from snugfit.memory.units import GiB, MiB
    >>> prof = ActivationProfile(fixed=0, per_sample=10 * MiB)
    >>> eval_batch_size(100 * MiB, prof, 224, budget=2 * GiB, reserved=512 * MiB)
    112
    >>> eval_batch_size(100 * MiB, prof, 224, budget=2 * GiB, max_bs=32)
    32
    """
    h, w = as_hw(size)
    input_per_sample = 3 * h * w * (1 + 4)
    room = budget - reserved - static - 1.15 * profile.fixed - 64 * MiB
    per_sample = 1.15 * profile.per_sample + input_per_sample
    return max(1, min(max_bs, math.floor(room / per_sample)))
