"""RSA (`--strategy rsa`) against the scripted server, asserted on what the server received: loop 0's
independent traces, then loops of aggregation prompts each holding K distinct traces of the loop before,
drawn per member from a generator seeded with the run; the lineage as stored; the final answer as the last
population's majority; from the command line and from Python."""

from __future__ import annotations

import itertools
import json
import sqlite3
import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from knowledge_flow import Context, compile_graph
from knowledge_flow.persistence import SqliteCheckpointer, get_store
from knowledge_flow.strategies import rsa
from knowledge_flow.strategies.rsa import draw_subsets
from tests.conftest import run_kflow
from tests.integration.rsa_support import (
    FAIL,
    GENSELECT_MARK,
    NONE,
    PROBLEM,
    TRACE,
    PopulationModel,
    aggregation_requests,
    choices,
    majority_of,
    stored_parents,
)
from tests.integration.test_trt_crash import kill_when
from tests.support.scripted_server import Request, ScriptedServer


def check_population(
    server: ScriptedServer, model: PopulationModel, db: Path, final: str | None, *, n: int, loops: int, k: int
) -> dict[int, list[tuple[str, ...]]]:
    """What the server received, and delivered, is RSA's loops (a request cut off by a crash is not counted:
    the client never read it); returns each loop's subsets (trace ids, as the prompts show)."""
    sent = [r for r in server.requests if GENSELECT_MARK not in r.prompt and r.delivered]
    first = [r for r in sent if not TRACE.search(r.prompt)]
    aggregations = [r for r in aggregation_requests(server) if r.delivered]
    assert sum(choices(model, r) for r in first) == n  # n independent traces
    assert sum(choices(model, r) for r in aggregations) == n * (loops - 1)  # then n aggregation prompts per loop
    by_loop: dict[int, list[tuple[str, ...]]] = {}
    started: dict[int, list[float]] = {0: [r.started for r in first]}
    for request in aggregations:
        shown = tuple(TRACE.findall(request.prompt))
        assert len(shown) == k and len(set(shown)) == k, request.prompt  # exactly K distinct traces
        previous = {model.produced[trace].loop for trace in shown}
        assert len(previous) == 1, "every trace a member aggregates is of one loop"
        loop = previous.pop() + 1
        by_loop.setdefault(loop, []).extend([shown] * choices(model, request))
        started.setdefault(loop, []).append(request.started)
    assert sorted(by_loop) == list(range(1, loops)) and all(len(s) == n for s in by_loop.values())
    for loop in range(1, loops):  # a loop starts once the loop before it is complete
        assert min(started[loop]) > max(started[loop - 1])
    # the stored lineage is what the prompts showed
    parents = stored_parents(db)
    for loop, subsets in by_loop.items():
        stored = [tuple(p) for trace, p in parents.items() if model.produced[trace].loop == loop]
        assert Counter(stored) == Counter(subsets)
    # the subsets are the draw of the generator seeded with the run and the loop, member by member (the run id
    # is random, so whether two members drew the same subset is chance: K = 1 of 3 traces gives all members
    # one trace 1 time in 9; that members draw apart is tests/unit/test_rsa_draw.py's, with fixed seeds)
    store = get_store(db)
    run = store.list_runs()[-1]
    rows = store.rollouts(run.run_id)
    for loop in range(1, loops):
        usable = [r.index for r in rows if r.iteration == loop - 1 and r.error is None and r.answer is not None]
        drawn = draw_subsets(usable, n, k, f"{run.run_id}:{loop}:rsa")
        members = sorted((r for r in rows if r.iteration == loop), key=lambda r: r.index)
        assert [[p.rsplit(":", 1)[1] for p in r.parents or []] for r in members] == [
            [str(i) for i in subset] for subset in drawn
        ]
    last = [t for t in model.delivered_traces(server) if t.loop == loops - 1]
    assert final == majority_of(last)
    return by_loop


def test_cli_rsa_sends_loops_of_aggregations(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    model = PopulationModel()
    server = scripted(model).start()
    db = tmp_path / "rsa.db"
    args = ["solve", PROBLEM, "--strategy", "rsa", "--thinkers", "4", "--iterations", "3", "--aggregation-size", "2"]
    proc = run_kflow([*args, "--base-url", server.base_url, "--model", "scripted-model", "--db", str(db), "--json"])
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["status"] == "done" and len(result["answers"]) == 3
    check_population(server, model, db, result["final_answer"], n=4, loops=3, k=2)
    # every member is a rollout like any other: stored, counted in the run's tokens
    rows = get_store(db).rollouts(get_store(db).list_runs()[-1].run_id)
    assert len(rows) == 12 and all(r.error is None for r in rows)
    usage = result["usage"]
    assert usage["completion_tokens"] == sum(r.completion_tokens for r in rows) > 0
    # kflow show draws the lineage: each member with the members it aggregated
    shown = run_kflow(["show", result["thread_id"], "--db", str(db), "--json"])
    assert shown.returncode == 0, shown.stderr
    payload = json.loads(shown.stdout)
    loops = payload["rsa"]["loops"]
    assert [len(loop["members"]) for loop in loops] == [4, 4, 4]
    assert all(member["aggregated"] == [] for member in loops[0]["members"])
    assert all(len(m["aggregated"]) == 2 and m["aggregated"][0].startswith("1.") for m in loops[2]["members"])
    assert [loop["majority"] for loop in loops] == result["answers"]
    text = run_kflow(["show", result["thread_id"], "--db", str(db)])
    assert text.returncode == 0 and "aggregated" in text.stdout and "independent" in text.stdout


def run_graph(server: ScriptedServer, db: Path, **inputs: Any) -> dict[str, Any]:
    checkpointer = SqliteCheckpointer(db)
    try:
        graph = compile_graph(checkpointer)
        return dict(
            graph.invoke(
                {"problem": PROBLEM, "model": "scripted-model", "strategy": "rsa", **inputs},
                {"configurable": {"thread_id": "p"}},
                context=Context(base_url=server.base_url, db_path=str(db), max_retries=0),
            )
        )
    finally:
        checkpointer.close()


def test_python_rsa_and_self_refinement(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    model = PopulationModel(first=("3", "9", "9", "9", "7"))
    server = scripted(model, honour_n=False).start()  # llama.cpp-like: one request per member
    result = run_graph(server, tmp_path / "py.db", thinkers=5, iterations=3, aggregation_size=3)
    check_population(server, model, tmp_path / "py.db", result["final_answer"], n=5, loops=3, k=3)
    assert len(server.requests) == 15
    # K = 1: self-refinement, each member refines one trace of the loop before
    model = PopulationModel()
    server = scripted(model).start()
    result = run_graph(server, tmp_path / "one.db", thinkers=3, iterations=2, aggregation_size=1)
    check_population(server, model, tmp_path / "one.db", result["final_answer"], n=3, loops=2, k=1)
    refinements = aggregation_requests(server)
    assert all("one attempted solution" in r.prompt for r in refinements)


def test_failed_and_unanswered_traces_are_not_drawn(
    scripted: type[ScriptedServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loop 0: one trace without an answer, so each member of loop 1 draws the three answered ones (K = 3).
    Loop 1: one member's request is refused (it fails) and another gives no answer: loop 2's members draw only
    loop 1's two answered traces, all of them since they are fewer than K.

    The draw is replaced by one that gives the members distinct orders of the pool it is handed: members whose
    prompts are the same share one request (`n`), and a refused request fails all of them, so with the random
    draw how many members one refusal fails would be chance. What this test checks is the pool handed to it."""
    pools: dict[str, list[int]] = {}

    def distinct_orders(
        pool: Sequence[int], members: int, size: int, seed: str, weights: Any = None
    ) -> list[list[int]]:
        pools[seed.split(":")[1]] = list(pool)
        orders = list(itertools.permutations(pool, min(size, len(pool))))
        return [list(orders[member % len(orders)]) for member in range(members)] if orders else [[]] * members

    monkeypatch.setattr(rsa, "draw_subsets", distinct_orders)
    outcomes = iter([FAIL, NONE, *["6"] * 10])
    model = PopulationModel(first=("5", NONE, "7", "9"), aggregate=lambda _answers: next(outcomes))
    server = scripted(model).start()
    db = tmp_path / "few.db"
    run_graph(server, db, thinkers=4, iterations=3, aggregation_size=3)
    delivered = model.delivered_traces(server)
    answered = {
        loop: {t.trace for t in delivered if t.loop == loop and t.answer not in (NONE, FAIL)} for loop in (0, 1)
    }
    assert len(answered[0]) == 3 and len(answered[1]) == 2
    for request in aggregation_requests(server):
        shown = TRACE.findall(request.prompt)
        loop = model.produced[shown[0]].loop
        assert set(shown) == answered[loop] and len(shown) == len(answered[loop])
    store = get_store(db)
    rows = store.rollouts(store.list_runs()[-1].run_id)
    assert [r.error is not None for r in rows if r.iteration == 1].count(True) == 1
    # the pools handed to the draw: the answered members of the loop before, by thinker
    for loop in (1, 2):
        usable = [r.index for r in rows if r.iteration == loop - 1 and r.error is None and r.answer is not None]
        assert pools[str(loop)] == usable and len(usable) == len(answered[loop - 1])


def test_a_loop_with_nothing_to_aggregate_sends_the_first_prompt(
    scripted: type[ScriptedServer], tmp_path: Path
) -> None:
    model = PopulationModel(aggregate=lambda _answers: NONE)  # loop 1 gives no answer at all
    server = scripted(model).start()
    db = tmp_path / "none.db"
    result = run_graph(server, db, thinkers=4, iterations=3, aggregation_size=2)
    independent = sorted((r for r in server.requests if not TRACE.search(r.prompt)), key=lambda r: r.started)
    loop_two = [model.produced[t] for r in independent[1:] for t in model.by_request[id(r.body)]]
    assert len(loop_two) == 4 and min(r.started for r in independent[1:]) > max(
        r.started for r in aggregation_requests(server)
    )
    store = get_store(db)
    rows = store.rollouts(store.list_runs()[-1].run_id)
    assert [r.parents for r in rows if r.iteration == 2] == [None] * 4
    assert result["answers"][1] is None and result["status"] == "done"


def stored_in_loop(db: Path, loop: int) -> int:
    """How many rollouts of `loop` are stored."""
    try:
        with sqlite3.connect(db) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM kf_rollouts WHERE iteration = ?", (loop,)).fetchone()[0])
    except sqlite3.Error:
        return 0


def test_sigkill_mid_loop_then_resume_keeps_the_subsets(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    """Kill the process while loop 1 is half done (one member's reply held), then `kflow resume`: nothing
    delivered is requested again, and the members sent again aggregate the same traces as before the kill."""
    release = threading.Event()
    held: list[Request] = []

    def hold(request: Request, loop: int) -> threading.Event | None:
        if loop == 1 and not held and not release.is_set():
            held.append(request)
            return release
        return None

    model = PopulationModel(hold=hold)
    server = scripted(model).start()
    db = tmp_path / "crash.db"
    inputs = {"problem": PROBLEM, "model": "scripted-model", "strategy": "rsa", "thinkers": 4, "iterations": 3}

    def settled() -> bool:
        """Loop 1 half done: a reply held, another stored, every reply made so far stored. Members whose subsets
        came out the same share one request, so when the run id's draw gives all four one subset, the held
        request is the whole loop (1 time in 1,728): then that one request in flight is the middle."""
        if not held:
            return False
        made = sum(1 for p in model.produced.values() if p.loop == 1) - choices(model, held[0])
        whole_loop = int(held[0].body.get("n") or 1) == 4  # (its other choices are made once it is released)
        return (made >= 1 or whole_loop) and stored_in_loop(db, 1) == made

    kill_when(server, db, {**inputs, "aggregation_size": 2}, settled, "the middle of loop 1", release, held)
    before = [r for r in server.requests]
    aborted = [r for r in before if r.aborted]

    resumed = run_kflow(["resume", "t", "--db", str(db), "--base-url", server.base_url, "--json"])
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads(resumed.stdout)
    assert result["status"] == "done" and len(result["answers"]) == 3
    # every member was paid for once: 4 traces per loop reached the client
    delivered = model.delivered_traces(server)
    assert Counter(t.loop for t in delivered) == {0: 4, 1: 4, 2: 4}

    def aggregates_loop_zero(request: Request) -> bool:
        shown = TRACE.findall(request.prompt)
        return bool(shown) and model.produced[shown[0]].loop == 0

    after = server.requests[len(before) :]
    loop_one_after = [r for r in after if aggregates_loop_zero(r)]
    # only the members not delivered before the kill are sent: the one cut off, and any whose request had not
    # reached the server yet
    delivered_before = sum(choices(model, r) for r in before if r.delivered and aggregates_loop_zero(r))
    assert aborted and sum(choices(model, r) for r in loop_one_after) == 4 - delivered_before
    # the members sent again after the crash show the same traces, in the same order, as before it
    for request in aborted:
        assert any(r.body["messages"] == request.body["messages"] for r in loop_one_after)
    assert not any(not TRACE.search(r.prompt) for r in after)  # loop 0 is not sent again
    check_population(server, model, db, result["final_answer"], n=4, loops=3, k=2)


def test_aggregation_size_above_the_population_is_refused(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    server = scripted(PopulationModel()).start()
    db = tmp_path / "refused.db"
    args = ["solve", PROBLEM, "--strategy", "rsa", "--thinkers", "3", "--aggregation-size", "4"]
    proc = run_kflow([*args, "--base-url", server.base_url, "--model", "scripted-model", "--db", str(db)])
    assert proc.returncode == 2
    assert (
        proc.stderr.strip().splitlines()[-1] == "error: aggregation_size (4) cannot exceed the population, thinkers (3)"
    )
    assert not db.exists() and server.requests == []
