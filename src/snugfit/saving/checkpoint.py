"""Training checkpoints: one safetensors file, no pickle, written atomically.

A checkpoint holds what training needs to go on *exactly* (`TrainingState`): the
model's weights, the optimizer's state (AdamW moments, steps), the fp16
GradScaler's state, the memory settings and freeze state, and, for a resumable
checkpoint, the position in the recipe (which fit, epoch and batch), the random
number generators, the data loader's epoch counter, the recorder's history and
the recipe's decisions. Tensors go in the safetensors body (``model.<name>``,
``opt.<param index>.<name>``, ``recipe.<name>``, ``rng.cpu``, ``rng.cuda.<i>``);
everything else is JSON in the safetensors header's metadata, checked field by
field when read (a checkpoint may come from someone else). The file is written to
a temporary name, flushed to disk, then renamed (`snugfit.saving.atomic`), so a
crash mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from snugfit.errors import SnugfitError
from snugfit.saving.atomic import atomic_write, dedupe_storage

FORMAT_VERSION = 1
_META_KEY = "snugfit"


@dataclass
class TrainingState:
    """Everything a checkpoint holds, as a learner hands it over and takes it back.

    Attributes:
        model: The model's state dict.
        optimizer: The optimizer's state dict.
        scaler: The fp16 GradScaler's state dict (None without one).
        precision, micro_bs, checkpointing: The memory settings.
        frozen_to: The first trainable layer group.
        arch: The timm architecture, if known.
        position: The next ``{"fit_index", "epoch", "iter"}`` to run (None: not resumable).
        data_epoch: The training loader's epoch counter to resume with.
        recorder: The recorder's history (`Recorder.state`).
        recipe_state, recipe_tensors: What a recipe decided and the weights it keeps.
        rng_cpu, rng_cuda: The random number generators.
    """

    model: dict[str, torch.Tensor]
    optimizer: dict
    scaler: dict | None
    precision: str
    micro_bs: int | None
    checkpointing: bool
    frozen_to: int
    arch: str | None = None
    position: dict | None = None
    data_epoch: int | None = None
    recorder: dict = field(default_factory=dict)
    recipe_state: dict = field(default_factory=dict)
    recipe_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    rng_cpu: torch.Tensor | None = None
    rng_cuda: list[torch.Tensor] = field(default_factory=list)


def _flatten_optimizer(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for idx, entries in sd["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"opt.{idx}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    for idx, entries in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(entries)
    groups = [
        {k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]
    ]
    return {"state": state, "param_groups": groups}


def write_checkpoint(path, state: TrainingState) -> Path:
    """Write ``state`` to ``path`` (a ``.safetensors`` file), atomically."""
    path = Path(path)
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in state.model.items()}
    opt_tensors, opt_meta = _flatten_optimizer(state.optimizer)
    tensors.update(opt_tensors)
    tensors.update(
        {f"recipe.{k}": v.detach().contiguous().cpu() for k, v in state.recipe_tensors.items()}
    )
    if state.rng_cpu is not None:
        tensors["rng.cpu"] = state.rng_cpu
    for i, rng in enumerate(state.rng_cuda):
        tensors[f"rng.cuda.{i}"] = rng
    meta = {
        "format_version": FORMAT_VERSION,
        "arch": state.arch,
        "optimizer": opt_meta,
        "scaler": state.scaler,
        "precision": state.precision,
        "micro_bs": state.micro_bs,
        "checkpointing": state.checkpointing,
        "frozen_to": state.frozen_to,
        "position": state.position,
        "data_epoch": state.data_epoch,
        "recorder": state.recorder,
        "recipe_state": state.recipe_state,
    }
    metadata = {_META_KEY: json.dumps(meta)}
    atomic_write(path, lambda tmp: save_file(dedupe_storage(tensors), str(tmp), metadata))
    return path


def load_training_state(path, resume: bool = False) -> TrainingState:
    """A checkpoint file as a `TrainingState`, every field checked.

    With ``resume`` the checkpoint must hold a training position.
    """
    tensors, meta = read_checkpoint(path)
    if resume and meta.get("position") is None:
        raise SnugfitError(f"{path}: this checkpoint has no training position to resume from")

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

    return TrainingState(
        model=part("model."),
        optimizer=_unflatten_optimizer(
            {k: v for k, v in tensors.items() if k.startswith("opt.")}, meta["optimizer"]
        ),
        scaler=meta["scaler"] or None,
        precision=meta["precision"],
        micro_bs=meta["micro_bs"],
        checkpointing=meta["checkpointing"],
        frozen_to=meta["frozen_to"],
        arch=meta["arch"],
        position=meta["position"],
        data_epoch=meta["data_epoch"],
        recorder=meta["recorder"],
        recipe_state=dict(meta.get("recipe_state") or {}),
        recipe_tensors=part("recipe."),
        rng_cpu=tensors.get("rng.cpu"),
        rng_cuda=[v for _, v in sorted(part("rng.cuda.").items(), key=lambda kv: int(kv[0]))],
    )


def read_position(path) -> dict | None:
    """The training position a checkpoint file holds, from its header alone (no tensor
    is read); None when there is no readable checkpoint with a position there.

    A run stopped by a failed write says from this which checkpoint is intact.
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get(_META_KEY, "null"))
        position = meta["position"]
    except Exception:
        return None
    return position if _FIELDS["position"](position) and position is not None else None


def read_checkpoint(path) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and the metadata of a checkpoint file, validated."""
    path = Path(path)
    if not path.is_file():
        raise SnugfitError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(_META_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iter)
    except Exception as e:
        raise SnugfitError(f"{path}: not a snugfit checkpoint ({e})") from None
    if raw is None:
        raise SnugfitError(f"{path}: not a snugfit checkpoint (no snugfit metadata)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise SnugfitError(f"{path}: checkpoint metadata is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise SnugfitError(f"{path}: checkpoint metadata must be a JSON object")
    if meta.get("format_version") != FORMAT_VERSION:
        raise SnugfitError(f"{path}: unsupported checkpoint version {meta.get('format_version')}")
    _check_meta(meta, path)
    return tensors, meta


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


# Each metadata field and the test its value must pass; a checkpoint is data from
# disk, possibly from someone else: check it before any of it reaches the learner.
_FIELDS = {
    "arch": lambda v: v is None or isinstance(v, str),
    "optimizer": lambda v: (
        isinstance(v, dict)
        and isinstance(v.get("param_groups"), list)
        and all(isinstance(g, dict) for g in v["param_groups"])
        and isinstance(v.get("scalars"), dict)
    ),
    "scaler": lambda v: v is None or isinstance(v, dict),
    "precision": lambda v: v in ("fp32", "bf16", "fp16"),
    "micro_bs": lambda v: v is None or (_is_count(v) and v > 0),
    "checkpointing": lambda v: isinstance(v, bool),
    "frozen_to": _is_count,
    "position": lambda v: (
        v is None
        or (
            isinstance(v, dict) and all(_is_count(v.get(k)) for k in ("fit_index", "epoch", "iter"))
        )
    ),
    "data_epoch": lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)),
    "recorder": lambda v: (
        isinstance(v, dict)
        and all(isinstance(v.get(k), list) for k in ("losses", "lrs", "moms", "rows"))
        and isinstance(v.get("partial"), dict)
    ),
    "recipe_state": lambda v: v is None or isinstance(v, dict),
}


def _check_meta(meta: dict, path: Path) -> None:
    for key, ok in _FIELDS.items():
        if key not in meta or not ok(meta[key]):
            raise SnugfitError(
                f"{path}: checkpoint field {key!r} is missing or invalid ({meta.get(key)!r:.60})"
            )
