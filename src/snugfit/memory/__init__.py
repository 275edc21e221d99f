"""Memory: byte units, the saved-activation probe, the plan, precision rules, OOM recovery.

Owns how much memory a training step takes, the settings that decide it
(`MemorySettings`) and which of them fit a budget. May import ``snugfit.errors`` and
``snugfit.models`` (its stages, for checkpointing), torch and rich; nothing that trains.
"""

from snugfit.memory.plan import (
    Candidate,
    MemoryPlan,
    enforce_budget,
    eval_batch_size,
    make_plan,
    micro_batches,
)
from snugfit.memory.probe import (
    ActivationProfile,
    SavedBytes,
    activation_bytes,
    autocast_for,
    forward_peak_bytes,
    profile_activations,
    profile_eval,
    saved_tensor_bytes,
    static_bytes,
)
from snugfit.memory.units import GiB, MiB, format_bytes, parse_bytes

__all__ = [
    "ActivationProfile",
    "Candidate",
    "GiB",
    "MemoryPlan",
    "MiB",
    "SavedBytes",
    "activation_bytes",
    "autocast_for",
    "enforce_budget",
    "eval_batch_size",
    "format_bytes",
    "forward_peak_bytes",
    "make_plan",
    "micro_batches",
    "parse_bytes",
    "profile_activations",
    "profile_eval",
    "saved_tensor_bytes",
    "static_bytes",
]
