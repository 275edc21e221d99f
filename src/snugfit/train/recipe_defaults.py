"""`auto_fit`'s defaults for each kind of model: a classifier (a linear head on
pooled features) or a segmentation decoder built from scratch. Arguments of
`auto_fit` left None take them; ``snugfit train`` records them in ``config.json``."""

from __future__ import annotations

from dataclasses import dataclass

from snugfit.models import has_classifier


@dataclass(frozen=True)
class Defaults:
    """`auto_fit`'s defaults for one kind of model."""

    epochs: int  # unfrozen epochs
    head_epochs: int  # head epochs on precomputed features (or on images)
    head_aug_epochs: int | None  # then with augmentation (None: 1, none after a solve)
    lr_mult: float  # span of the discriminative learning rates
    patience: int  # early stopping of the unfrozen phase (0: none)


DEFAULTS = {
    # A linear head on pooled features: solved or trained in seconds on stored
    # features, then (when the body trains) a short unfrozen phase, stopped as soon
    # as the validation loss rises (README, "The automated checklist").
    "classifier": Defaults(epochs=2, head_epochs=4, head_aug_epochs=None, lr_mult=10.0, patience=1),
    # A decoder from scratch reads every level of the encoder: it learns with the
    # encoder from the first step, as segmentation-models-pytorch users train it.
    # Measured on bench/segment.py's scenes (seeds 0-1 unless said): 4 head epochs
    # on the frozen encoder, then 2 unfrozen with early stopping: Dice 0.966; one
    # head epoch, then 8 epochs of everything: 0.982 with lr_mult 10 and early
    # stopping off (0.972 with patience 3), 0.985 at one learning rate (lr_mult 1);
    # with segmentation's flip-only augmentation 0.992 in 64 s, of which 19 s were
    # the head's lr_find; without it 0.991 (seeds 0-2) in 49 s; no head epoch at
    # all (these defaults; bench/segment.py, seeds 0-2): 0.990 (0.989-0.992) in
    # 47.2 s, the hand-written smp loop 0.991 (0.989-0.992) in 50.6 s (README).
    "decoder": Defaults(epochs=8, head_epochs=0, head_aug_epochs=0, lr_mult=1.0, patience=0),
}


def defaults_for(model) -> Defaults:
    """`auto_fit`'s `DEFAULTS` for ``model``: a classifier's, or a decoder's."""
    return DEFAULTS["classifier" if has_classifier(model) else "decoder"]
