"""GenSelect against the scripted server: as the select rule (one call per iteration whose candidates
disagree, its choice becomes the iteration's answer) and as the final-answer rule (one call over the last
population picks the final answer); the call is stored and never requested twice, a SIGKILL while it is in
flight included. Asserted on what the server received."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

from knowledge_flow.persistence import get_store
from tests.conftest import run_kflow
from tests.integration.rsa_support import GENSELECT_MARK, PROBLEM, TRACE, PopulationModel
from tests.integration.test_rsa import run_graph
from tests.integration.test_trt_crash import kill_when
from tests.support.scripted_server import Request, ScriptedServer


def distinct_answers() -> Iterator[str]:
    """Aggregations that never agree (so the last population disagrees)."""
    return iter(str(n) for n in range(10, 100))


def shown(request: Request) -> list[str]:
    return TRACE.findall(request.prompt)


def test_genselect_as_the_select_rule(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    answers = distinct_answers()
    model = PopulationModel(
        aggregate=lambda _a: next(answers), choose=lambda _p: 'The fourth is right. {"selected_solution_id": 4}'
    )
    server = scripted(model).start()
    db = tmp_path / "select.db"
    result = run_graph(server, db, thinkers=4, iterations=2, aggregation_size=2, select_rule="genselect")
    calls = [r for r in server.requests if GENSELECT_MARK in r.prompt]
    assert len(calls) == 2  # one per loop: both loops' members disagree
    for loop, call in enumerate(calls):
        traces = shown(call)
        assert len(traces) == 4 and {model.produced[t].loop for t in traces} == {loop}
        assert result["answers"][loop] == model.produced[traces[3]].answer  # the fourth, not the vote ("9")
    assert result["answers"][0] == "7"
    rows = get_store(db).calls(get_store(db).list_runs()[-1].run_id)
    assert [row.kind for row in rows] == ["genselect", "genselect"]
    assert result["usage"]["completion_tokens"] > sum(
        r.completion_tokens for r in get_store(db).rollouts(rows[0].run_id)
    )


def test_genselect_as_the_final_answer_rule_from_the_cli(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    answers = distinct_answers()
    model = PopulationModel(aggregate=lambda _a: next(answers), choose=lambda _p: '{"selected_solution_id": 3}')
    server = scripted(model).start()
    db = tmp_path / "final.db"
    args = ["solve", PROBLEM, "--strategy", "rsa", "--thinkers", "4", "--iterations", "2", "--aggregation-size", "2"]
    args += ["--final-answer", "genselect", "--base-url", server.base_url, "--model", "scripted-model"]
    proc = run_kflow([*args, "--db", str(db), "--json"])
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    calls = [r for r in server.requests if GENSELECT_MARK in r.prompt]
    assert len(calls) == 1
    traces = shown(calls[0])
    assert len(traces) == 4 and {model.produced[t].loop for t in traces} == {1}  # the last population
    assert result["final_answer"] == model.produced[traces[2]].answer
    # stored once, never requested again
    before = len(server.requests)
    again = run_kflow(["resume", result["thread_id"], "--db", str(db), "--base-url", server.base_url, "--json"])
    assert again.returncode == 0, again.stderr
    assert len(server.requests) == before and json.loads(again.stdout)["final_answer"] == result["final_answer"]
    store = get_store(db)
    assert [row.kind for row in store.calls(store.list_runs()[-1].run_id)] == ["genselect-final"]
    show = run_kflow(["show", result["thread_id"], "--db", str(db)])
    assert show.returncode == 0 and "final answer by GenSelect: trace" in show.stdout


def test_sigkill_during_the_final_call_then_resume_pays_it_once(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    release = threading.Event()
    held: list[Request] = []
    answers = distinct_answers()

    def hold(request: Request, loop: int) -> threading.Event | None:
        if loop == -1 and not held and not release.is_set():
            held.append(request)
            return release
        return None

    model = PopulationModel(
        aggregate=lambda _a: next(answers), choose=lambda _p: '{"selected_solution_id": 2}', hold=hold
    )
    server = scripted(model).start()
    db = tmp_path / "crash.db"
    inputs = {"problem": PROBLEM, "model": "scripted-model", "strategy": "rsa", "thinkers": 4, "iterations": 2}
    inputs |= {"aggregation_size": 2, "final_answer_rule": "genselect"}
    kill_when(server, db, inputs, lambda: bool(held), "the final call", release, held, thread="g")
    rollouts_before = len([r for r in server.requests if GENSELECT_MARK not in r.prompt])
    resumed = run_kflow(["resume", "g", "--db", str(db), "--base-url", server.base_url, "--json"])
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads(resumed.stdout)
    calls = [r for r in server.requests if GENSELECT_MARK in r.prompt]
    assert [c.delivered for c in calls] == [False, True]  # the cut-off call sent again, once
    assert len([r for r in server.requests if GENSELECT_MARK not in r.prompt]) == rollouts_before  # no rollout
    assert calls[1].body["messages"] == calls[0].body["messages"]
    assert result["final_answer"] == model.produced[shown(calls[1])[1]].answer


def test_genselect_with_self_consistency_in_both_roles(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    """Select rule: one call among an iteration's 4 thinkers. Final-answer rule: one call among every trace
    of the run (self-consistency's pool is the whole run)."""
    model = PopulationModel(choose=lambda _p: '{"selected_solution_id": 4}')
    server = scripted(model).start()
    inputs = {"strategy": "self-consistency", "thinkers": 4, "iterations": 1, "select_rule": "genselect"}
    result = run_graph(server, tmp_path / "select.db", **inputs)
    (call,) = [r for r in server.requests if GENSELECT_MARK in r.prompt]
    traces = shown(call)
    assert len(traces) == 4 and result["answers"] == [model.produced[traces[3]].answer]

    model = PopulationModel(choose=lambda _p: '{"selected_solution_id": 4}')
    server = scripted(model).start()
    inputs = {"strategy": "self-consistency", "thinkers": 2, "iterations": 2, "final_answer_rule": "genselect"}
    result = run_graph(server, tmp_path / "final.db", **inputs)
    (call,) = [r for r in server.requests if GENSELECT_MARK in r.prompt]
    traces = shown(call)
    assert len(traces) == 4 and {model.produced[t].loop for t in traces} == {0}  # every trace of the run
    assert set(traces) == set(model.produced)  # all four traces of the two iterations
    assert result["final_answer"] == model.produced[traces[3]].answer
