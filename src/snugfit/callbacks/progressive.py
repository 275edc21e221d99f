"""Progressive resizing: train on small images first, then larger ones."""

from __future__ import annotations

from collections.abc import Sequence

from snugfit.callbacks import Callback
from snugfit.errors import SnugfitError
from snugfit.sizes import Size, as_hw, check_size


def size_at(epoch: int, n_epoch: int, sizes: Sequence[Size]) -> Size:
    """The image size for ``epoch`` of ``n_epoch``: ``sizes`` spread evenly over the epochs.

    >>> [size_at(e, 6, [128, 176, 224]) for e in range(6)]
    [128, 128, 176, 176, 224, 224]
    """
    return sizes[min(len(sizes) - 1, epoch * len(sizes) // n_epoch)]


def size_steps(
    start: Size, end: Size, n: int, full_frac: float = 0.2, multiple: int = 16
) -> list[Size]:
    """One size per epoch for ``n`` epochs: from ``start`` growing linearly (both
    sides), the last ``full_frac`` of the epochs at ``end`` (as Composer does);
    rounded to ``multiple``.

    >>> size_steps(128, 224, 5)
    [128, 160, 176, 192, 224]
    >>> size_steps((64, 96), (128, 192), 3)[:2]
    [(64, 96), (96, 144)]
    """
    n_full = max(1, round(n * full_frac))
    n_grow = n - n_full
    (h0, w0), (h1, w1) = as_hw(start), as_hw(end)

    def side(a: int, b: int, i: int) -> int:
        return max(multiple, round((a + (b - a) * i / n_grow) / multiple) * multiple)

    grow = [check_size("sizes", (side(h0, h1, i), side(w0, w1, i))) for i in range(n_grow)]
    return grow + [end] * n_full


class ProgressiveResize(Callback):
    """Set the data's image size at each epoch from a size schedule.

    The size is applied where images are loaded (decoding and augmentation at
    the smaller size cost less), the memory plan is redone for each new size
    (a bigger micro-batch fits at small sizes; the effective batch stays), and
    the learning-rate schedule runs on across size changes: it depends only on
    training progress.

    Args:
        sizes: sizes spread evenly over the epochs, e.g. ``[128, 176, 224]`` or
            ``[(700, 1050), (1400, 2100)]``.
        start, end: alternatively, grow from ``start`` to ``end`` (see `size_steps`).
    """

    order = -20  # before the scheduler and the recorder

    def __init__(
        self, sizes: Sequence[int] | None = None, start: int | None = None, end: int | None = None
    ):
        given = list(sizes) if sizes is not None else [start, end]
        if (sizes is None) == (start is None or end is None) or not given:
            raise SnugfitError("ProgressiveResize: give sizes=[...] or start= and end=")
        for s in given:
            try:
                check_size("sizes", s)
            except SnugfitError:
                raise SnugfitError(
                    f"sizes: expected positive sizes (a side or (height, width)), got {given!r}"
                ) from None
        self.sizes, self.start, self.end = sizes, start, end

    def before_epoch(self, learn) -> None:
        if self.sizes is not None:
            size = size_at(learn.epoch, learn.n_epoch, self.sizes)
        else:
            size = size_steps(self.start, self.end, learn.n_epoch)[learn.epoch]
        if size != learn.dls.size:
            learn.dls.set_size(size)
            learn.replan_if_needed()
