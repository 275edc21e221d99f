"""Training checkpoints: one safetensors file, no pickle, written atomically.

A checkpoint holds what training needs to go on *exactly*: the model's weights,
the optimizer's state (AdamW moments, steps), the fp16 GradScaler's state, the
learner's memory settings and freeze state, and, for a resumable checkpoint, the
position in the recipe (which fit, epoch and batch), the random number
generators, the data loader's epoch counter and the recorder's history. Tensors go in the safetensors body
(``model.<name>`` and ``opt.<param index>.<name>``); everything else is JSON in
the safetensors header's metadata. The file is written to a temporary name,
flushed to disk, then renamed, so a crash mid-write leaves the previous
checkpoint intact.
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from snugfit.errors import SnugfitError

FORMAT_VERSION = 1
_META_KEY = "snugfit"


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
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


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)``, fsync, then rename over ``path``.

    ``write`` must have flushed and closed the file when it returns (safetensors'
    ``save_file`` does). The temporary file's name holds this process's id: one
    left by a process killed mid-write is removed by the next write.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself is durable
    finally:
        os.close(dir_fd)


def _remove_stale_temporaries(path: Path) -> None:
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        pid = tmp.name.rpartition("-")[2]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


def save_checkpoint(learn, path, position: dict | None = None) -> Path:
    """Write ``learn``'s training state to ``path`` (a ``.safetensors`` file).

    Args:
        learn: the Learner.
        path: the file to write (atomically).
        position: where training stands, ``{"fit_index", "epoch", "iter"}``: the
            next batch to run. With it the checkpoint can resume a recipe exactly.
    """
    # A loss not checked yet (CUDA checks one step late) is checked first: a
    # non-finite one raises with the last good weights restored, and nothing is written.
    learn.nonfinite.resolve(learn)
    path = Path(path)
    from snugfit.distributed import is_main

    if not is_main():
        return path  # under torchrun the ranks hold the same state: rank 0 writes it
    tensors = {
        f"model.{k}": v.detach().contiguous().cpu() for k, v in learn.model.state_dict().items()
    }
    opt_tensors, opt_meta = _flatten_optimizer(learn.opt)
    tensors.update(opt_tensors)
    tensors.update(
        {f"recipe.{k}": v.detach().contiguous().cpu() for k, v in learn.recipe_tensors.items()}
    )
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    train_dl = getattr(learn.dls, "train", None)
    meta = {
        "format_version": FORMAT_VERSION,
        "arch": learn.arch,
        "optimizer": opt_meta,
        "scaler": learn.scaler.state_dict() if learn.scaler is not None else None,
        "precision": learn.precision,
        "micro_bs": learn.micro_bs,
        "checkpointing": learn.checkpointing,
        "frozen_to": learn.frozen_to,
        "position": position,
        "data_epoch": _data_epoch(train_dl, position, getattr(learn, "train_dl", train_dl)),
        "recorder": learn.recorder.state(),
        "recipe_state": learn.recipe_state,
    }
    metadata = {_META_KEY: json.dumps(meta)}
    atomic_write(path, lambda tmp: save_file(_dedupe_storage(tensors), str(tmp), metadata))
    return path


def _data_epoch(train_dl, position: dict | None, training_dl) -> int | None:
    """The loader epoch the resumed run must iterate first.

    A loader counts the epochs it has started: mid-epoch, the epoch in progress
    is one less than its counter. Not so while the fit trains on precomputed
    features (``training_dl``): the image loader then has no epoch in progress.
    """
    epoch = getattr(train_dl, "epoch", None)
    if epoch is None or position is None:
        return epoch
    return epoch - 1 if position["iter"] > 0 and training_dl is train_dl else epoch


def _dedupe_storage(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share memory (tied weights): give each its own.
    seen, out = set(), {}
    for k, v in tensors.items():
        ptr = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return out


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


def load_checkpoint(learn, path, resume: bool = False) -> dict:
    """Restore ``learn``'s training state from ``path``; returns the metadata.

    With ``resume`` also the RNGs, the data epoch and the recorder's history, for
    an exact continuation (the position itself is returned in the metadata).
    """
    tensors, meta = read_checkpoint(path)
    if resume and meta.get("position") is None:
        raise SnugfitError(f"{path}: this checkpoint has no training position to resume from")
    model_sd = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        learn.model.load_state_dict(model_sd)
    except RuntimeError as e:
        raise SnugfitError(f"{path}: weights do not match this model ({e})") from None
    learn.freeze_to(meta["frozen_to"])
    opt_tensors = {k: v for k, v in tensors.items() if k.startswith("opt.")}
    learn.opt.load_state_dict(_unflatten_optimizer(opt_tensors, meta["optimizer"]))
    learn._set_precision(meta["precision"])
    if learn.scaler is not None and meta["scaler"]:
        learn.scaler.load_state_dict(meta["scaler"])
    learn.micro_bs = meta["micro_bs"]
    learn.set_checkpointing(meta["checkpointing"])
    if resume:
        restore_position(learn, tensors, meta)
    return meta


def restore_position(learn, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Put back what makes the continuation exact: RNGs, data epoch, history."""
    torch.set_rng_state(tensors["rng.cpu"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    train_dl = getattr(learn.dls, "train", None)
    if meta["data_epoch"] is not None and hasattr(train_dl, "epoch"):
        train_dl.epoch = meta["data_epoch"]
    learn.recorder.load_state(meta["recorder"])
    learn.recipe_state = dict(meta.get("recipe_state") or {})
    learn.recipe_tensors = {k[7:]: v for k, v in tensors.items() if k.startswith("recipe.")}
