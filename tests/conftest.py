from __future__ import annotations

import os

# Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning. With
# spinning, any other busy process (DataLoader workers, a parallel job) makes a
# 2-core machine's training steps up to 200x slower (measured: 1.5 s vs 9 ms).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch

from fixtures import HYMENOPTERA, make_image_folder


@pytest.fixture(autouse=True)
def _few_threads():
    # The CI machine has 2 cores; keep tests from oversubscribing them.
    torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    # Each test gets its own pixel cache (and demo data): tests never write to
    # ~/.cache, and never see entries another test left.
    monkeypatch.setenv("SNUGFIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SNUGFIT_CACHE_SIZE", raising=False)


@pytest.fixture
def image_folder(tmp_path):
    """Two colour classes in ImageNet layout: train/ (8 each) and val/ (4 each)."""
    return make_image_folder(tmp_path / "data")


@pytest.fixture
def hymenoptera():
    if not HYMENOPTERA.is_dir():
        pytest.skip(f"real data not found at {HYMENOPTERA} (../shared/data/hymenoptera_data)")
    return HYMENOPTERA
