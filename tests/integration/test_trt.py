"""TRT rounds against the scripted server: strategies per thinker, planning and reflection calls, the
knowledge items' cap and disabling, selection by vote and by verifier, and stored calls that are never paid
twice."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from knowledge_flow import Context, compile_graph
from knowledge_flow.figures import run_figures, totals, trt_rounds
from knowledge_flow.persistence import SqliteCheckpointer, get_store
from knowledge_flow.prompts import load_prompt_set
from tests.conftest import run_kflow
from tests.integration.strategy_support import run_recorded
from tests.integration.trt_support import TrtModel, kind_of, plan_reply, reflect_reply, technique_of
from tests.support.scripted_server import Reply, Request, ScriptedServer


def solve_requests(server: ScriptedServer) -> list[Request]:
    return [r for r in server.requests if kind_of(r) == "solve"]


def kinds(server: ScriptedServer) -> list[str]:
    return [kind_of(r) for r in server.requests]


def small_cap_prompts(tmp_path: Path, max_items: int) -> str:
    source = load_prompt_set("kf-instruct").source.replace("max_items = 5", f"max_items = {max_items}")
    path = tmp_path / "capped.toml"
    path.write_text(source.replace('name = "kf-instruct"', 'name = "capped"'))
    return str(path)


def test_rounds_strategies_reflection_cap_and_disable(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    model = TrtModel(
        plan=plan_reply("A", "B"),
        reflect=[
            reflect_reply(["A", "C"], "one"),
            reflect_reply(["A", "D"], "two"),  # round 2 agrees: its lesson is not kept
            reflect_reply(["A", "E"], "three", disable=1),
            reflect_reply(["A", "F"], "four"),
        ],
        solve={
            "A": ("5", -0.1),
            "B": ("7", -1.0),
            "C": ("5", -0.5),
            "D": ("9", -0.2),
            "E": ("11", -0.3),
            "F": ("5", -0.4),
        },
    )
    server = scripted(model).start()
    db = tmp_path / "trt.db"
    final, steps = run_recorded(server, db, strategy="trt", iterations=5, prompts=small_cap_prompts(tmp_path, 2))
    assert final["status"] == "done" and final["answers"] == ["5"] * 5 and final["final_answer"] == "5"

    # one planning call, one reflection between rounds (none after the last), two thinkers a round
    assert kinds(server) == ["plan", "solve", "solve"] + ["reflect", "solve", "solve"] * 4
    assert all(r.body.get("n", 1) == 1 for r in server.requests)  # different prompts: separate requests
    techniques = [sorted(str(technique_of(r)) for r in solve_requests(server)[2 * k : 2 * k + 2]) for k in range(5)]
    assert techniques == [["A", "B"], ["A", "C"], ["A", "D"], ["A", "E"], ["A", "F"]]
    first = solve_requests(server)[0].prompt
    assert "## Your strategy\nAttempt " in first and "What to try: try " in first
    assert "## Strategy history" not in first and "None yet." in first
    assert "## Current best solution" not in first  # show_reference is off by default
    later = next(r.prompt for r in solve_requests(server) if technique_of(r) == "C")
    assert "Round 1 (selected answer: 5):\n- A: answer 5 (selected)\n- B: answer 7 (disagrees)\n" in later
    assert "1. Pattern: pattern one\n   When it applies: sign one\n   Key insight: insight one\n" in later

    # the knowledge record after each round's reflection (seen by the next round's distill snapshot)
    texts = [[(i["lesson"]["pattern"], bool(i.get("disabled"))) for i in s["knowledge"]] for s in steps]
    assert texts[0] == []
    assert texts[1] == [("pattern one", False)]  # added after round 1 (B disagreed)
    assert texts[2] == [("pattern one", False)]  # round 2 agreed: "two" not kept
    assert texts[3] == [("pattern one", True), ("pattern three", False)]  # disabled 1, then added
    assert texts[4] == [("pattern three", False), ("pattern four", False)]  # cap 2: the disabled one aged out
    assert final["reflection"]["note"] is None and final["reflection"]["added"].startswith("Pattern: pattern four")
    assert steps[2]["reflection"]["note"] == "no failure in the round: the lesson is not kept"
    # a disabled item is not shown (numbers are among the shown items)
    round4 = next(r.prompt for r in solve_requests(server) if technique_of(r) == "E")
    assert "1. Pattern: pattern three" in round4 and "pattern one" not in round4

    history = final["strategy_history"]
    assert [h["round"] for h in history] == [1, 2, 3, 4, 5]
    assert [h["agreement"] for h in history] == [0.5, 1.0, 0.5, 0.5, 1.0]
    assert [e["outcome"] for e in history[0]["entries"]] == ["selected", "disagrees"]
    assert final["thinker_strategies"] == [
        {"key_technique": "A", "what_to_try": "try A"},
        {"key_technique": "F", "what_to_try": "try F"},
    ]
    assert final["reference"] == ": Solved with A."  # the selected candidate becomes the reference

    store = get_store(db)
    run_id = final["run_id"]
    calls = store.calls(run_id)
    assert [c.id.split(":", 1)[1] for c in calls] == ["0:plan", "1:reflect", "2:reflect", "3:reflect", "4:reflect"]
    assert calls[3].outcome is not None and calls[3].outcome["disabled"] == 1
    rows = store.rollouts(run_id)
    assert [(r.iteration, r.index, (r.strategy or {}).get("key_technique")) for r in rows][:4] == [
        (0, 0, "A"),
        (0, 1, "B"),
        (1, 0, "A"),
        (1, 1, "C"),
    ]
    # the run's usage counts the calls outside the rollouts too
    assert final["usage"]["completion_tokens"] == sum(r.completion_tokens for r in rows) + sum(
        c.completion_tokens for c in calls
    )
    figures = trt_rounds(store, run_id)
    assert [r["selected_answer"] for r in figures["rounds"]] == ["5"] * 5
    assert figures["rounds"][0]["thinkers"][1] | {"completion_tokens": 0} == {
        "thinker": 1,
        "key_technique": "B",
        "what_to_try": "try B",
        "answer": "7",
        "selected": False,
        "error": None,
        "completion_tokens": 0,
    }
    assert figures["rounds"][0]["reflection_after"]["outcome"]["added"].startswith("Pattern: pattern one")
    assert figures["plan"]["outcome"]["strategies"][1]["key_technique"] == "B"
    assert figures["calls"] == 5 and "trt" in run_figures(store, run_id)
    over = totals(store, [run_id])
    assert [r["mean_agreement"] for r in over["trt_rounds"]] == [0.5, 1.0, 0.5, 0.5, 1.0]
    assert over["calls"]["calls"] == 5 and over["trt_rounds"][1]["answer_changed_share"] == 0.0
    json.dumps(figures)


def test_select_by_verifier(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    model = TrtModel(
        plan=plan_reply("A", "B", "C"),
        reflect=[reflect_reply(["A", "B", "C"])],
        verify=['I checked them. {"ranking": [3, 1, 2], "selected_solution_id": 3}', "no verdict here"],
        solve={"A": ("5", -0.1), "B": ("5", -0.2), "C": ("7", -3.0)},
    )
    server = scripted(model).start()
    final, steps = run_recorded(
        server, tmp_path / "v.db", strategy="trt", thinkers=3, iterations=2, select_rule="verifier"
    )
    # round 1: the vote says 5, the verifier picks solution 3 (answer 7)
    assert final["answers"] == ["7", "5"]
    assert steps[0]["selection"]["rule"] == "verifier" and steps[0]["selection"]["answer"] == "7"
    assert steps[0]["strategy_history"][0]["rule"] == "verifier"
    # round 2: the verifier's reply has no verdict: the vote decides among the previous best (7) and the round's
    # three rollouts (5, 5, 7): a 2-2 tie, settled by confidence (A's -0.1 beats C's -3.0)
    assert steps[1]["selection"]["rule"] == "vote (no verdict; tie: confidence)"
    assert steps[1]["selection"]["votes"] == {"5": 2.0, "7": 2.0}
    verify = [r for r in server.requests if kind_of(r) == "verify"]
    assert len(verify) == 2
    assert "### Solution 3\nAnswer: 7\nSummary: Solved with C.\n" in verify[0].prompt
    # the previous best is candidate 1 of round 2, then the round's rollouts
    assert "### Solution 1\nAnswer: 7\nSummary: Solved with C.\n\n### Solution 2\nAnswer: 5\n" in verify[1].prompt
    assert "### Solution 4\nAnswer: 7\n" in verify[1].prompt and "### Solution 5" not in verify[1].prompt
    store = get_store(tmp_path / "v.db")
    calls = {c.kind: c for c in store.calls(final["run_id"]) if c.iteration == 0}
    assert calls["verify"].outcome == {
        "selected_solution_id": 3,
        "rollout_id": f"{final['run_id']}:0:2",
        "error": None,
    }
    assert store.get_rollout(f"{final['run_id']}:0:2").rank == 0  # type: ignore[union-attr]


def test_verifier_is_skipped_when_the_thinkers_agree(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    model = TrtModel(plan=plan_reply("A", "B"), verify=["{}"], solve={"A": ("5", -0.1), "B": ("5", -0.2)})
    server = scripted(model).start()
    final, steps = run_recorded(server, tmp_path / "s.db", strategy="trt", iterations=1, select_rule="verifier")
    assert "verify" not in kinds(server) and final["answers"] == ["5"]
    assert steps[0]["selection"]["rule"] == "vote (no disagreement to verify)"


def test_failed_planning_and_unparsable_reflection(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    model = TrtModel(
        plan="I would rather not plan.",
        reflect=["not json at all", json.dumps({"strategies": [{"key_technique": "Z", "what_to_try": "z"}]})],
        solve={None: ("5", -0.1), "Z": ("5", -0.1)},
    )
    server = scripted(model).start()
    final, steps = run_recorded(server, tmp_path / "f.db", strategy="trt", iterations=3)
    solves = solve_requests(server)
    # no strategies: each thinker chooses its own approach, and the thinkers of a round share one request
    assert len(solves) == 4 and [r.body.get("n") for r in solves[:2]] == [2, 2]
    assert "Choose the approach you judge most likely to succeed" in solves[0].prompt
    assert steps[0]["thinker_strategies"] == [] and steps[0]["reflection"]["kind"] == "plan"
    assert steps[1]["reflection"]["note"] == "no JSON object with strategies in the reply"
    # a partial list: the first thinker follows Z, the second chooses its own approach
    last = solve_requests(server)[-2:]
    assert sorted(str(technique_of(r)) for r in last) == ["None", "Z"]
    assert final["answers"] == ["5", "5", "5"]


def test_show_reference(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    model = TrtModel(plan=plan_reply("A"), reflect=[reflect_reply(["A"])], solve={"A": ("5", -0.1)})
    server = scripted(model).start()
    first, _ = run_recorded(server, tmp_path / "r.db", strategy="trt", thinkers=1, iterations=2, show_reference=True)
    solves = solve_requests(server)
    assert "## Current best solution" not in solves[0].prompt
    assert "## Current best solution (it may contain mistakes)\nSolved with A.\n" in solves[1].prompt
    assert first["strategy_history"] and first["thinker_strategies"] and first["reflection"]
    # a later run on the same thread starts without the earlier run's rounds
    later, _ = run_recorded(server, tmp_path / "r.db", strategy="knowledge-flow", iterations=1)
    assert later["run_id"] != first["run_id"]
    assert (later["strategy_history"], later["thinker_strategies"], later["reflection"]) == ([], [], None)
    assert later["selection"] is None and later["knowledge"] == []


def test_replaying_any_step_pays_for_nothing(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    """Every LLM call of a TRT round is stored before it is used: running any step again (here: forking the
    thread from each of its checkpoints) reads the stored calls and rollouts back and sends no request."""
    model = TrtModel(
        plan=plan_reply("A", "B"),
        reflect=[reflect_reply(["A", "C"], "one")],
        verify=['{"selected_solution_id": 2}'],
        solve={"A": ("5", -0.1), "B": ("7", -1.0), "C": ("8", -0.5)},
    )
    server = scripted(model).start()
    db = tmp_path / "replay.db"
    final, _ = run_recorded(server, db, strategy="trt", iterations=2, select_rule="verifier")
    sent = len(server.requests)
    assert kinds(server).count("verify") == 2

    silent = scripted(lambda _request: Reply(content="", status=500)).start()
    checkpointer = SqliteCheckpointer(db)
    try:
        graph = compile_graph(checkpointer)
        config: Any = {"configurable": {"thread_id": "s"}}
        history = list(graph.get_state_history(config))
        replayed = 0
        for snapshot in history:
            if snapshot.next and snapshot.next[0] in ("reflect", "solve", "verify"):
                result = graph.invoke(
                    None, snapshot.config, context=Context(base_url=silent.base_url, db_path=str(db), max_retries=0)
                )
                assert result["final_answer"] == final["final_answer"] and result["answers"] == final["answers"]
                replayed += 1
        assert replayed >= 5
    finally:
        checkpointer.close()
    assert not silent.requests and len(server.requests) == sent


def test_from_the_command_line_and_shown_per_round(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    model = TrtModel(
        plan=plan_reply("A", "B"),
        reflect=[reflect_reply(["A", "C"], "one")],
        solve={"A": ("5", -0.1), "B": ("7", -1.0), "C": ("5", -0.5)},
    )
    server = scripted(model).start()
    db = tmp_path / "cli.db"
    common = ["--db", str(db), "--base-url", server.base_url]
    solved = run_kflow(["solve", "Find x.", "--strategy", "trt", "--iterations", "2", "--json", *common])
    assert solved.returncode == 0, solved.stderr
    result = json.loads(solved.stdout)
    assert result["final_answer"] == "5"
    assert kinds(server) == ["plan", "solve", "solve", "reflect", "solve", "solve"]
    shown = run_kflow(["show", result["thread_id"], "--db", str(db), "--json"])
    assert shown.returncode == 0, shown.stderr
    rounds = json.loads(shown.stdout)["trt"]["rounds"]
    assert [(r["round"], r["selected_answer"], r["agreement"]) for r in rounds] == [(1, "5", 0.5), (2, "5", 1.0)]
    assert [t["key_technique"] for t in rounds[1]["thinkers"]] == ["A", "C"]
    assert rounds[0]["reflection_after"]["outcome"]["added"].startswith("Pattern: pattern one")
    text = run_kflow(["show", result["thread_id"], "--db", str(db)])
    assert text.returncode == 0, text.stderr
    assert "A -> 5; B -> 7" in text.stdout and "50%" in text.stdout and "next: A, C" in text.stdout
