"""A tiny run of each benchmark, so they cannot rot (the full runs are documented in docs/performance.md and
docs/accuracy.md)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
from benchmarks import accuracy, b1_efficiency, b2_barrier, b3_storage, b4_overhead, b5_prompts


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


@pytest.mark.e2e
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="needs the local extra")
def test_accuracy_tiny(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A real llama.cpp server with the 0.5B model, 2 problems x 2 rollouts of 40 tokens: every row is there,
    paired with self-consistency on the same problems, and a second invocation reads the runs back."""
    figures = accuracy.main(["--tiny", "--db", str(tmp_path / "accuracy.db")])
    out = capsys.readouterr().out
    assert "McNemar p" in out and "qwen2.5-coder-0.5b-instruct" in out
    rows = {row["label"]: row for row in figures["rows"]}
    assert list(rows) == [
        "self-consistency, majority of 2",
        "one rollout (rollout 0)",
        "knowledge-flow (paper), last",
        "knowledge-flow (paper), majority",
        "knowledge-flow + guard, last",
        "knowledge-flow + guard, majority",
    ]
    assert all(row["problems"] == 2 and row["tokens_per_problem"] > 0 for row in rows.values())
    assert rows["self-consistency, majority of 2"]["paired"] is None
    assert all(row["paired"]["common"] == 2 for label, row in rows.items() if not label.startswith("self"))
    assert len(rows["knowledge-flow (paper), last"]["pass_at_1"]) == 2
    again = accuracy.main(["--tiny", "--db", str(tmp_path / "accuracy.db")])
    assert again["runs"] == figures["runs"]  # finished runs are read back, not run again
    assert "reusing finished run" in capsys.readouterr().err
