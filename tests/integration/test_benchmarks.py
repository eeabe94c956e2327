"""A tiny run of each benchmark, so they cannot rot (the full runs are documented in docs/performance.md and
docs/accuracy.md)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
from benchmarks import accuracy, b1_efficiency, b2_barrier, b3_storage, b4_overhead, b5_prompts, b7_workers

from tests.support.postgres import PostgresCluster


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


def test_b7_workers_tiny(capsys: pytest.CaptureFixture[str], postgres_cluster: PostgresCluster) -> None:
    figures = b7_workers.main(["--tiny", "--postgres", postgres_cluster.url()])
    assert "CPU ms / graph step" in capsys.readouterr().out
    rows = {(row["store"], row["workers"]): row for row in figures["rows"]}
    assert set(rows) == {("SQLite", 1), ("PostgreSQL", 1), ("PostgreSQL", 2)}  # each checked: done once, paid once
    for row in rows.values():
        assert row["rollouts_per_s"] > 0 and row["cpu_ms_per_step"] > 0
        assert sum(row["shares"]) == pytest.approx(100, abs=0.5) and len(row["shares"]) <= row["workers"]


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
    stored = accuracy.main(["--tiny", "--db", str(tmp_path / "accuracy.db"), "--stored"])
    assert stored["rows"] == figures["rows"] and "starting" not in capsys.readouterr().err  # no server
    with pytest.raises(SystemExit, match=r"thinkers: no run thinkers-.* run it first"):
        accuracy.main(["--tiny", "--db", str(tmp_path / "accuracy.db"), "--stored", "--variants", "sc,thinkers"])


def test_rows_count_the_problems_every_run_finished() -> None:
    """A run read with --stored may be unfinished: every row is cut to the problems all runs finished."""
    from knowledge_flow.evaluation.compare import ProblemRecord, RunRecords

    def run(label: str, ids: list[str]) -> RunRecords:
        return RunRecords(label, [ProblemRecord(i, [True], True, [1], [1], ["1"], "1") for i in ids])

    cut = accuracy.on_common_problems([run("a", ["p1", "p2", "p3"]), run("b", ["p3", "p1"]), run("c", ["p1", "p3"])])
    assert [[p.problem_id for p in r.problems] for r in cut] == [["p1", "p3"], ["p3", "p1"], ["p1", "p3"]]
    assert [r.label for r in cut] == ["a", "b", "c"]
    assert accuracy.on_common_problems([run("a", ["p1"]), run("b", [])])[0].problems == []


def test_server_seconds_count_queued_requests_once() -> None:
    """A population's requests are sent together and queued by the server: their intervals overlap and the
    server's time is their union, not their sum."""
    assert accuracy.busy_seconds([(0.0, 10.0), (0.0, 20.0), (5.0, 30.0), (40.0, 45.0)]) == 35.0
    assert accuracy.busy_seconds([(3.0, 4.0), (0.0, 1.0)]) == 2.0  # unordered, disjoint: the sum
    assert accuracy.busy_seconds([(0.0, 10.0), (2.0, 3.0)]) == 10.0  # one inside another
    assert accuracy.busy_seconds([]) == 0.0


def test_accuracy_tiny_rsa(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """RSA at matched rollouts with self-consistency on the real 0.5B model: 1 problem x 8 rollouts (a
    population of 4, two loops); with GenSelect the final answer is the run's own (at most one call)."""
    db = tmp_path / "rsa.db"
    args = ["--tiny", "--variants", "sc,rsa,rsa-genselect", "--iterations", "8", "--problems", "1", "--db", str(db)]
    figures = accuracy.main(args)
    assert "McNemar p" in capsys.readouterr().out
    rows = {row["label"]: row for row in figures["rows"]}
    assert list(rows) == [
        "self-consistency, majority of 8",
        "one rollout (rollout 0)",
        "RSA N=4 K=2, majority of the last population",
        "RSA N=4 K=2 + GenSelect, majority of the last population",
        "RSA N=4 K=2 + GenSelect, GenSelect",
    ]
    assert all(row["problems"] == 1 and row["tokens_per_problem"] > 0 for row in rows.values())
    assert all(row["paired"]["common"] == 1 for label, row in rows.items() if label.startswith("RSA"))
    from knowledge_flow.persistence import get_store

    store = get_store(db)
    population = [r for r in store.list_runs() if r.params.get("strategy") == "rsa"]
    assert len(population) == 2  # 1 problem x 2 variants
    for run in population:
        rollouts = store.rollouts(run.run_id)
        usable = sum(1 for r in rollouts if r.iteration == 0 and r.error is None and r.answer is not None)
        assert sorted(r.iteration for r in rollouts) == [0] * 4 + [1] * 4
        # each loop-1 member aggregated 2 distinct loop-0 traces (all of them when fewer are usable)
        for member in (r for r in rollouts if r.iteration == 1):
            parents = member.parents or []
            assert len(parents) == len(set(parents)) == min(2, usable)
            assert all(p.startswith(f"{run.run_id}:0:") for p in parents)
    calls = [c for r in population for c in store.calls(r.run_id)]
    assert len(calls) <= 1 and all(c.kind == "genselect-final" for c in calls)
