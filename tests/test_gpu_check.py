"""bench/gpu_check.py's dry run on the CPU, and the one rule that turns figures into pass/fail."""

import json
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import gpu_check  # noqa: E402
from _kit import Goal, Row, verdict  # noqa: E402


def test_verdict_from_hand_made_numbers():
    within = Goal("<=", 10.0, abs_value=True)
    assert verdict(9.99, within) is True
    assert verdict(-10.0, within) is True
    assert verdict(-10.5, within) is False  # an under-prediction counts too
    assert verdict(1.49, Goal(">=", 1.5)) is False
    assert verdict(1.5, Goal(">=", 1.5)) is True
    assert verdict(0, Goal("==", 0)) is True and verdict(1, Goal("==", 0)) is False
    assert verdict(math.nan, Goal("<=", 1.0)) is False
    assert verdict(math.inf, Goal(">=", 1.0)) is False
    assert verdict(None, within) is None and verdict(3.0, None) is None
    with pytest.raises(ValueError, match="goal op"):
        Goal("<", 1.0)


def test_a_row_takes_its_result_from_verdict_unless_it_raised():
    assert Row("x", "ratio", 0.97, goal=Goal(">=", 0.98)).passed is False
    assert Row("x", "ratio", 0.99, goal=Goal(">=", 0.98)).passed is True
    failed = Row("x", "check raised", None, error="ValueError: boom")
    assert failed.passed is False and failed.to_dict()["goal"] is None


def test_a_check_that_raises_is_one_failed_row_and_the_kit_goes_on(tmp_path, monkeypatch):
    def boom(ctx):
        raise RuntimeError("shape mismatch\nmore")

    def fine(ctx):
        return [ctx.row("fine", "one", 2.0, goal=Goal(">=", 1.0))]

    monkeypatch.setattr(gpu_check, "CHECKS", {"boom": boom, "fine": fine})
    rows = gpu_check.main(["--dry-run", "--out", str(tmp_path), "--checks", "boom", "fine"])
    assert [(r.check, r.passed) for r in rows] == [("boom", False), ("fine", True)]
    assert rows[0].error == "RuntimeError: shape mismatch"
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [r["check"] for r in saved["rows"]] == ["boom", "fine"]
    assert set(saved["meta"]["seconds"]) == {"boom", "fine"}


def assert_rows(saved: dict, checks: list[str]) -> None:
    rows = saved["rows"]
    assert saved["meta"]["mode"] == "dry-run"
    assert {r["check"] for r in rows} == set(checks)
    for r in rows:
        assert r["dry_run"] and r["error"] is None, r
        if r["figure"] is None:  # only a skipped row has no figure
            assert r["note"].startswith("skipped"), r
            continue
        assert isinstance(r["figure"], float) and math.isfinite(r["figure"]), r
        goal = r["goal"] and Goal(r["goal"]["op"], r["goal"]["target"], r["goal"]["abs_value"])
        assert r["passed"] == verdict(r["figure"], goal or None), r


def run_dry(tmp_path, checks: list[str]) -> dict:
    gpu_check.main(["--dry-run", "--out", str(tmp_path), "--checks", *checks])
    return json.loads((tmp_path / "gpu_check.json").read_text())


def test_dry_run_of_every_check(tmp_path, capsys):
    """Every check's logic on the CPU (about 10 s): what the GPU run would break on."""
    saved = run_dry(tmp_path, list(gpu_check.CHECKS))
    assert_rows(saved, list(gpu_check.CHECKS))
    by_name = {r["name"]: r for r in saved["rows"]}
    # the logic ran for real on the CPU: an injected OOM recovered with the same weights
    assert by_name["training OOMs recovered"]["figure"] >= 1
    assert by_name["max |w - w_fallback|"]["figure"] <= 1e-5
    assert by_name["NaN stop: step"]["figure"] == 4
    assert by_name["NaN stop: max |w - w_epoch0|"]["figure"] == 0
    assert by_name["solved head: predictions as the CPU's"]["figure"] == 1.0  # CPU both times
    names = list(by_name)
    assert any("fp32 + ckpt" in n for n in names) and any("bf16" in n for n in names)
    assert "snugfit / hand-written" in names and "loader host rate / training rate" in names
    out = capsys.readouterr().out
    assert "(dry-run)" in out and "rows," in out
