"""Pretrained weights from the Hugging Face hub, with no long wait when offline.

timm fetches pretrained weights through huggingface_hub. With no network and nothing
cached, the hub retries each file with back-off (about 25 s a file, and timm asks
for two) before it gives up. `from_hub` first asks whether the hub answers
(`hub_problem`: one HEAD request, with the hub's own timeout); when it does not,
the weights are looked up in the local cache only (huggingface_hub's offline mode,
as ``HF_HUB_OFFLINE=1`` sets it), so cached weights still load and missing ones fail
at once, with one line saying how to continue offline (`NO_HUB_HINT`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import timm
from torch import nn

from snugfit.errors import SnugfitError, first_line

NO_HUB_HINT = (
    "pass a local weights file (--weights FILE; weights= in Python) or start from random "
    "weights (--no-pretrained; pretrained=False)"
)


def hub_problem(timeout: float | None = None) -> str | None:
    """Why the hub cannot be reached (offline mode set, or the request's error); None
    when it answers (any HTTP status: the network works).

    ``timeout`` defaults to the hub's own (``HF_HUB_ETAG_TIMEOUT``, 10 s).
    """
    from huggingface_hub import constants, get_session

    if constants.is_offline_mode():
        return "HF_HUB_OFFLINE is set"
    wait = constants.HF_HUB_ETAG_TIMEOUT if timeout is None else timeout
    try:
        get_session().head(constants.ENDPOINT, timeout=wait)
    except Exception as e:  # DNS, refused, proxy, timeout: the HTTP client has many types
        return first_line(e)
    return None


@contextlib.contextmanager
def cache_only() -> Iterator[None]:
    """huggingface_hub's offline mode while the block runs: files come from the local
    cache, and a missing one fails at once instead of after retries."""
    from huggingface_hub import constants

    # The library reads HF_HUB_OFFLINE into this constant at import, and consults it
    # (``is_offline_mode``) on every request: set it for the block, then put it back.
    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def from_hub(arch: str) -> nn.Module:
    """timm's model ``arch`` with its pretrained weights, from the hub or its local cache.

    Raises:
        SnugfitError: The weights cannot be had; the line says how to continue
            (`NO_HUB_HINT`).
    """
    problem = hub_problem()
    try:
        with cache_only() if problem is not None else contextlib.nullcontext():
            return timm.create_model(arch, pretrained=True)
    except Exception as e:  # network, hub and cache errors come in many types
        if problem is not None:
            raise SnugfitError(
                f"arch {arch!r}: no pretrained weights in the local cache and the hub cannot "
                f"be reached ({problem}); to continue offline, {NO_HUB_HINT}"
            ) from e
        raise SnugfitError(
            f"arch {arch!r}: could not fetch pretrained weights ({first_line(e)}); {NO_HUB_HINT}"
        ) from e
