"""`kflow report` per trace, for a population run evaluated against the scripted server: pass@1 over every
trace, maj@k by its estimator, pass@1 of each loop's population, accuracy against cumulative tokens, and
`--compare` at common token budgets; the expected figures computed here from what the server sent back."""

from __future__ import annotations

import itertools
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from knowledge_flow.persistence import get_store
from tests.conftest import run_kflow
from tests.integration.rsa_support import GENSELECT_MARK, PopulationModel
from tests.support.scripted_server import ScriptedServer

PROBLEMS = {"p1": ("How many sides has a pentagon?", "5"), "p2": ("What is four plus five?", "9")}


def evaluate(scripted: type[ScriptedServer], tmp_path: Path, run_id: str, k: int, *extra: str) -> PopulationModel:
    dataset = tmp_path / "two.jsonl"
    dataset.write_text("\n".join(json.dumps({"id": i, "problem": p, "answer": a}) for i, (p, a) in PROBLEMS.items()))
    answers = iter(str(n) for n in range(10, 100))
    aggregate = (lambda _a: next(answers)) if extra else PopulationModel.aggregate
    model = PopulationModel(first=("5", "9", "9", "7", "none"), aggregate=aggregate)
    server = scripted(model).start()
    args = ["eval", "--dataset", str(dataset), "--strategy", "rsa", "--thinkers", "4", "--iterations", "2"]
    args += ["--aggregation-size", str(k), "--model", "scripted-model", "--base-url", server.base_url]
    args += [
        "--db",
        str(tmp_path / "eval.db"),
        "--output-dir",
        str(tmp_path / "out"),
        "--eval-id",
        run_id,
        "--json",
        *extra,
    ]
    proc = run_kflow(args)
    assert proc.returncode == 0, proc.stderr
    model.server = server  # type: ignore[attr-defined]
    return model


def traces_by_problem(model: PopulationModel) -> dict[str, list[tuple[int, str, bool]]]:
    """Per problem, its delivered traces as (loop, answer, right), read from the server's log."""
    server: ScriptedServer = model.server  # type: ignore[attr-defined]
    found: dict[str, list[tuple[int, str, bool]]] = {key: [] for key in PROBLEMS}
    for request in server.requests:
        if not request.delivered or GENSELECT_MARK in request.prompt:
            continue
        key = next(k for k, (problem, _) in PROBLEMS.items() if problem in request.prompt)
        for trace in model.by_request[id(request.body)]:
            produced = model.produced[trace]
            found[key].append((produced.loop, produced.answer, produced.answer == PROBLEMS[key][1]))
    return found


def expected_maj(traces: list[tuple[int, str, bool]], k: int) -> float:
    """The estimator as documented: every k-subset, plurality of the answered traces, a tie split evenly."""
    credits = []
    for subset in itertools.combinations(traces, k):
        votes: dict[str, int] = {}
        for _, answer, _ in subset:
            if answer != "none":
                votes[answer] = votes.get(answer, 0) + 1
        top = max(votes.values(), default=0)
        leaders = [a for a, n in votes.items() if n == top] if votes else []
        gold = next((a for _, a, right in subset if right), None)
        credits.append(1 / len(leaders) if gold is not None and gold in leaders else 0.0)
    return sum(credits) / len(credits)


def test_report_per_trace_and_at_equal_tokens(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    model = evaluate(scripted, tmp_path, "rsa-two", 2)
    found = traces_by_problem(model)
    assert all(len(traces) == 8 for traces in found.values())  # 4 members x 2 loops
    proc = run_kflow(["report", "rsa-two", "--db", str(tmp_path / "eval.db"), "--out", str(tmp_path / "r"), "--json"])
    assert proc.returncode == 0, proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout)
    traces = report["traces"]
    pass_at_1 = sum(sum(r for _, _, r in t) / len(t) for t in found.values()) / len(found)
    assert traces["pass_at_1"] == pytest.approx(pass_at_1)
    assert (traces["fewest_traces"], traces["most_traces"], traces["traces"]) == (8, 8, 16)
    assert [int(k) for k in traces["maj_at_k"]] == [1, 2, 4, 8]
    for k, value in traces["maj_at_k"].items():
        assert value == pytest.approx(sum(expected_maj(t, int(k)) for t in found.values()) / len(found)), k
    for loop, figures in enumerate(report["per_iteration"]):
        shares = [sum(r for lp, _, r in t if lp == loop) / 4 for t in found.values()]
        assert figures["trace_accuracy"] == pytest.approx(sum(shares) / len(shares))
        assert figures["cumulative_tokens_per_problem"] == pytest.approx(figures["cumulative_tokens"] / 2)
    text = run_kflow(["report", "rsa-two", "--db", str(tmp_path / "eval.db"), "--out", str(tmp_path / "r")])
    assert "maj@4" in text.stdout and "pass@1 (all traces)" in text.stdout

    # a second run (self-refinement, K = 1) compared on a common tokens-per-problem axis
    evaluate(scripted, tmp_path, "rsa-one", 1)
    args = [
        "report",
        "rsa-two",
        "--compare",
        "rsa-one",
        "--db",
        str(tmp_path / "eval.db"),
        "--out",
        str(tmp_path / "r"),
    ]
    compared = run_kflow([*args, "--json"])
    assert compared.returncode == 0, compared.stderr
    payload = json.loads(compared.stdout)
    matched = payload["equal_tokens"]
    curves = {
        r["eval_id"]: [(f["cumulative_tokens_per_problem"], f["final_accuracy"]) for f in r["per_iteration"]]
        for r in [payload, *payload["compare"]]
    }
    low = max(points[0][0] for points in curves.values())
    high = min(points[-1][0] for points in curves.values())
    assert matched["budgets"] and all(low <= b <= high for b in matched["budgets"])
    for label, points in curves.items():  # at each budget: the run's last point within it
        assert matched["accuracy"][label] == [
            [a for t, a in points if t <= budget][-1] for budget in matched["budgets"]
        ]
    shown = run_kflow(args)
    assert shown.returncode == 0 and "tokens per problem" in shown.stdout


def test_the_token_axis_counts_the_calls(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    """A GenSelect final call's tokens are on the tokens-per-problem axis of the iteration it belongs to."""
    evaluate(scripted, tmp_path, "rsa-gs", 2, "--final-answer", "genselect")
    proc = run_kflow(["report", "rsa-gs", "--db", str(tmp_path / "eval.db"), "--out", str(tmp_path / "r"), "--json"])
    assert proc.returncode == 0, proc.stderr
    last = json.loads(proc.stdout)["per_iteration"][-1]
    store = get_store(tmp_path / "eval.db")
    calls = [c for run in store.list_runs() for c in store.calls(run.run_id)]
    assert len(calls) == 2 and all(c.kind == "genselect-final" for c in calls)  # one per problem
    paid = sum(c.prompt_tokens + c.completion_tokens for c in calls)
    assert paid > 0
    assert last["cumulative_tokens_per_problem"] == pytest.approx((last["cumulative_tokens"] + paid) / 2)
    # a problem recorded before calls were counted in its tokens (an unsealed, older row) is still read
    with sqlite3.connect(tmp_path / "eval.db") as conn:
        run_id = conn.execute("SELECT run_id FROM kf_eval_items WHERE position = 0").fetchone()[0]
        rows = get_store(tmp_path / "eval.db").rollouts(run_id)
        by_loop = [[r for r in rows if r.iteration == k] for k in range(2)]
        prompt = json.dumps([sum(r.prompt_tokens for r in loop) for loop in by_loop])
        completion = json.dumps([sum(r.completion_tokens for r in loop) for loop in by_loop])
        conn.execute(
            "UPDATE kf_eval_items SET prompt_tokens_json = ?, completion_tokens_json = ?, seal = NULL "
            "WHERE position = 0",
            (prompt, completion),
        )
    report = ["report", "rsa-gs", "--db", str(tmp_path / "eval.db"), "--out", str(tmp_path / "r"), "--json"]
    assert run_kflow(report).returncode == 0
    with sqlite3.connect(tmp_path / "eval.db") as conn:  # tokens that are neither: damage
        conn.execute("UPDATE kf_eval_items SET prompt_tokens_json = '[1, 1]' WHERE position = 0")
    damaged = run_kflow(report)
    assert damaged.returncode == 1 and "recorded tokens disagree" in damaged.stderr
