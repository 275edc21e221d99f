"""The package's shape (../shared/tools/shape.py --strict): no import cycle, no module
over 500 lines, no function over 80, no read of another object's private attributes."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHAPE = ROOT.parent / "shared" / "tools" / "shape.py"


def test_package_shape_is_strict():
    if not SHAPE.is_file():
        pytest.skip(f"shape tool not found at {SHAPE} (../shared/tools/shape.py)")
    out = subprocess.run(
        [sys.executable, str(SHAPE), str(ROOT / "src" / "snugfit"), "--strict"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout
    top = int(out.stdout.split(" modules, ")[1].split(" at the top level")[0])
    assert top <= 12, out.stdout  # the folder tree, not a flat package, shows the architecture
