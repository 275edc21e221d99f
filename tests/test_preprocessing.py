"""The frozen preprocessing value that loaders own and saved models carry."""

from dataclasses import FrozenInstanceError

import pytest

from snugfit.data.preprocessing import Preprocessing
from snugfit.errors import SnugfitError


def test_preprocessing_is_a_checked_frozen_value():
    p = Preprocessing(224)
    assert (p.train_size, p.crop_pct, len(p.mean)) == (256, 0.875, 3)
    q = p.replace(size=128, mean=(0.5, 0.5, 0.5))
    assert (q.size, q.train_size, q.mean) == (128, 144, (0.5, 0.5, 0.5)) and p.size == 224
    with pytest.raises(FrozenInstanceError):
        p.size = 64
    with pytest.raises(SnugfitError, match="presize: must be at least size"):
        p.replace(presize=100)
    with pytest.raises(SnugfitError, match="crop_pct"):
        p.replace(crop_pct=1.5)
    with pytest.raises(SnugfitError, match="mean: expected 3 numbers"):
        p.replace(mean=(0.5, 0.5))
    back = Preprocessing.from_config(q.to_config())
    assert back == q.replace(presize=None)
