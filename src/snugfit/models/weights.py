"""Loading a local weights file into a model, never running pickled code.

`load_weights` reads ``.safetensors`` or plain ``.pth`` state dicts (``torch.load``
with ``weights_only=True``), unwraps common containers, and converts
efficientnet-pytorch checkpoints by tensor order (`convert_by_order`), every shape checked.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from snugfit.errors import SnugfitError, first_line

SAFETENSORS_SUFFIXES = {".safetensors"}
TORCH_SUFFIXES = {".pth", ".pt", ".bin"}

# Keys under which training scripts commonly nest the real state dict.
_CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "net")
# Prefixes added by DataParallel/DistributedDataParallel and by torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a local weights file into ``model`` in place.

    ``.safetensors`` files are read with safetensors; ``.pth``/``.pt``/``.bin`` with
    ``torch.load(weights_only=True)``, so a file that needs full unpickling (which
    can run arbitrary code) is refused. Common containers are unwrapped:
    ``{"state_dict": ...}``, ``{"model": ...}`` and ``module.`` prefixes.

    If the keys match the model's, the file is loaded strictly (shapes checked).
    An efficientnet-pytorch checkpoint (``_conv_stem``, ``_blocks.N``, ``_fc``) is
    mapped onto the model by tensor order with `convert_by_order`.

    Args:
        model: The model to load into; its classifier must have the file's shape.
        path: The weights file.

    Raises:
        SnugfitError: If the file is missing, unreadable, not a plain state dict, or
            does not fit the model (naming the first differing keys or shapes).
    """
    path = Path(path)
    state = _unwrap(_read_state_dict(path), path)
    dst = model.state_dict()

    if _keys_match(state, dst):
        # Old checkpoints lack BatchNorm's counters; they carry no learned value.
        for key, value in dst.items():
            if key not in state:
                state[key] = value
        for key, value in dst.items():
            if state[key].shape != value.shape:
                raise SnugfitError(
                    f"{path}: tensor {key} has shape {_shape(state[key])} "
                    f"but the model expects {_shape(value)}"
                )
    elif _looks_like_efficientnet_pytorch(state):
        try:
            state = convert_by_order(state, dst)
        except SnugfitError as e:
            raise SnugfitError(f"{path}: efficientnet-pytorch weights do not fit: {e}") from e
    else:
        unexpected = [k for k in state if k not in dst]
        missing = [k for k in dst if k not in state]
        raise SnugfitError(
            f"{path}: keys do not match {type(model).__name__}: "
            f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3]) or '-'}), "
            f"{len(missing)} missing (e.g. {', '.join(missing[:3]) or '-'})"
        )
    model.load_state_dict(state, strict=True)


def _read_state_dict(path: Path) -> Any:
    """Read a weights file without ever running pickled code."""
    if not path.is_file():
        raise SnugfitError(f"{path}: weights file not found")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own and OS errors
            raise SnugfitError(f"{path}: not a readable safetensors file ({first_line(e)})") from e
    if suffix in TORCH_SUFFIXES:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            # weights_only refuses any object that is not tensors and plain containers.
            raise SnugfitError(
                f"{path}: not a plain state dict (it needs full unpickling, which could "
                "run arbitrary code); re-save it with torch.save(model.state_dict())"
            ) from e
        except Exception as e:
            raise SnugfitError(f"{path}: not a readable PyTorch file ({first_line(e)})") from e
    allowed = ", ".join(sorted(SAFETENSORS_SUFFIXES | TORCH_SUFFIXES))
    raise SnugfitError(f"{path}: unsupported weights file type {suffix!r}; use one of {allowed}")


def _unwrap(obj: Any, path: Path) -> dict[str, Tensor]:
    """Return the plain ``{name: tensor}`` dict inside a checkpoint container."""
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise SnugfitError(f"{path}: expected a state dict of tensors, got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise SnugfitError(f"{path}: not a plain state dict: entry {bad[0]!r} is not a tensor")
    state = dict(obj)
    for prefix in _WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _keys_match(src: Mapping[str, Tensor], dst: Mapping[str, Tensor]) -> bool:
    """Same keys, allowing the source to lack BatchNorm ``num_batches_tracked``."""
    if not set(src) <= set(dst):
        return False
    return all(k.endswith("num_batches_tracked") for k in dst if k not in src)


def _looks_like_efficientnet_pytorch(state: Mapping[str, Tensor]) -> bool:
    keys = list(state)
    return (
        any(k.startswith("_conv_stem.") for k in keys)
        and any(re.match(r"_blocks\.\d+\.", k) for k in keys)
        and any(k.startswith("_fc.") for k in keys)
    )


def convert_by_order(src: Mapping[str, Tensor], dst: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map ``src`` tensors onto ``dst`` keys by position.

    Works for checkpoints of the same network written by another implementation
    (e.g. efficientnet-pytorch to timm) whose state dicts list the same tensors in
    the same order under different names.

    Args:
        src: The checkpoint's state dict, in its saved order.
        dst: The target model's state dict, in module order.

    Returns:
        A state dict with ``dst``'s keys and ``src``'s tensors.

    Raises:
        SnugfitError: If the counts differ or a pair of tensors differs in shape
            (naming the first such pair).
    """
    src_items = list(src.items())
    dst_items = list(dst.items())
    # Compare the common prefix first: the first differing shape shows where the
    # layouts diverge, which says more than the counts alone.
    pairs = zip(src_items, dst_items, strict=False)
    for i, ((s_key, s_val), (d_key, d_val)) in enumerate(pairs):
        if s_val.shape != d_val.shape:
            raise SnugfitError(
                f"tensor {i}: {s_key} {_shape(s_val)} does not match {d_key} {_shape(d_val)} "
                f"(source has {len(src_items)} tensors, model {len(dst_items)})"
            )
    if len(src_items) != len(dst_items):
        raise SnugfitError(
            f"source has {len(src_items)} tensors but the model has {len(dst_items)}; "
            "they cannot be matched by order"
        )
    return {d_key: s_val for (_, s_val), (d_key, _) in zip(src_items, dst_items, strict=True)}


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)
