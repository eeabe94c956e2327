"""A tiny run of each benchmark, so they cannot rot (the full runs are documented in the README)."""

from __future__ import annotations

import math

import pytest
from benchmarks import b1_efficiency, b2_barrier, b3_storage, b4_overhead, b5_prompts


def test_b1_efficiency_tiny(capsys: pytest.CaptureFixture[str]) -> None:
    figures = b1_efficiency.main(["--tiny"])
    out = capsys.readouterr().out
    assert "| problems | iterations |" in out and "seed=" in out
    assert 0 < figures["ratio"] <= 1.05  # the bound is a true lower bound: no run beats it
    assert figures["bound"] > 0


def test_b2_barrier_tiny(capsys: pytest.CaptureFixture[str]) -> None:
    figures = b2_barrier.main(["--tiny"])
    assert "speedup" in capsys.readouterr().out
    assert figures["speedup_4"] > 0 and math.isfinite(figures["speedup_4"])


def test_b3_storage_tiny(capsys: pytest.CaptureFixture[str]) -> None:
    figures = b3_storage.main(["--tiny"])
    assert "file / generated" in capsys.readouterr().out
    assert 0 < figures["worst_ratio"] < 100
    assert figures["bytes_per_rollout_last"] > 0
    # storage claim (sizes, not timings): each 8k-token rollout adds less than 1.5x its text to the file
    assert 0 < figures["worst_growth_ratio"] < 1.5


def test_b4_overhead_tiny(capsys: pytest.CaptureFixture[str]) -> None:
    figures = b4_overhead.main(["--tiny"])
    assert "ms per step" in capsys.readouterr().out
    assert all(value > 0 for value in figures.values())


def test_b5_prompts_tiny(capsys: pytest.CaptureFixture[str]) -> None:
    figures = b5_prompts.main(["--tiny"])
    assert "prompt tokens" in capsys.readouterr().out
    assert figures["record"] >= 3  # the answer changed at every rollout
    assert figures["peak"] <= figures["bound"]
