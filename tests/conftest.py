from __future__ import annotations

import pytest
import torch

from fixtures import HYMENOPTERA, make_image_folder


@pytest.fixture(autouse=True)
def _few_threads():
    # The CI machine has 2 cores; keep tests from oversubscribing them.
    torch.set_num_threads(2)


@pytest.fixture
def image_folder(tmp_path):
    """Two colour classes in ImageNet layout: train/ (8 each) and val/ (4 each)."""
    return make_image_folder(tmp_path / "data")


@pytest.fixture
def hymenoptera():
    if not HYMENOPTERA.is_dir():
        pytest.skip(f"real data not found at {HYMENOPTERA} (../shared/data/hymenoptera_data)")
    return HYMENOPTERA
