"""TRT's previous best as a candidate of every select rule, the manager call (one per round, its JSON and what
happens when the JSON is bad), votes settled on a tie, and where each choice is recorded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from knowledge_flow import Context, compile_graph
from knowledge_flow.persistence import SqliteCheckpointer, get_store
from knowledge_flow.prompts import load_prompt_set
from tests.conftest import run_kflow
from tests.integration.strategy_support import PROBLEM, run_recorded
from tests.integration.trt_support import (
    MANAGE_MARK,
    VERIFY_MARK,
    TrtModel,
    kind_of,
    manage_reply,
    plan_reply,
    reflect_reply,
)
from tests.support.scripted_server import Reply, Request, ScriptedServer, kf_output


def kinds(server: ScriptedServer) -> list[str]:
    return [kind_of(r) for r in server.requests]


def of_kind(server: ScriptedServer, kind: str) -> list[Request]:
    return [r for r in server.requests if kind_of(r) == kind]


#: Round 1 finds the right answer (5, both thinkers); round 2's two thinkers agree on a wrong one (9).
CHAMPION = {"A": ("5", -0.1), "B": ("5", -0.2), "C": ("9", -0.3), "D": ("9", -0.4)}


def champion() -> TrtModel:
    """The champion case, with a verifier and a manager that both choose solution 1 (the previous best)."""
    return TrtModel(
        plan=plan_reply("A", "B"),
        reflect=[reflect_reply(["C", "D"])],
        verify=['{"selected_solution_id": 1}'],
        manage=[manage_reply(1, ["C", "D"]), manage_reply(1)],
        solve=CHAMPION,
    )


@pytest.mark.parametrize("rule", ["verifier", "manager"])
def test_the_previous_best_is_kept_against_two_agreeing_wrong_rollouts(
    scripted: type[ScriptedServer], tmp_path: Path, rule: str
) -> None:
    model = champion()
    server = scripted(model).start()
    db = tmp_path / "champion.db"
    final, steps = run_recorded(server, db, strategy="trt", iterations=2, select_rule=rule)
    run_id = final["run_id"]
    first = f"{run_id}:0:0"  # round 1's selected rollout (A: 5)

    assert final["answers"] == ["5", "5"] and final["final_answer"] == "5"
    selection = steps[1]["selection"]
    assert selection == {
        "rule": rule,
        "rollout_id": first,
        "answer": "5",
        "votes": {"5": 1.0, "9": 2.0},
        "agreement": round(1 / 3, 4),
        "kept_previous": True,
    }
    # the reference and the best so far stay; the round's history says the previous best was kept
    assert final["reference"] == steps[0]["reference"] == ": Solved with A."
    assert final["reference_answer"] == "5" and final["best"]["rollout_id"] == first
    last = final["strategy_history"][-1]
    assert last["kept_previous"] is True and last["selected_answer"] == "5" and last["rule"] == rule
    assert [e["outcome"] for e in last["entries"]] == ["disagrees", "disagrees"]
    assert "kept_previous" not in final["strategy_history"][0]

    # the call saw the previous best as Solution 1, then the round's two rollouts
    calls = of_kind(server, "verify" if rule == "verifier" else "manage")
    second = calls[-1].prompt
    assert second.index("### Solution 1\n") < second.index("Answer: 5") < second.index("### Solution 2\n")
    assert second.count("Answer: 9") == 2 and "### Solution 4" not in second
    if rule == "verifier":
        assert kinds(server) == ["plan", "solve", "solve", "reflect", "solve", "solve", "verify"]
    else:  # one manager call per round, also when all agree; no reflection call
        assert kinds(server) == ["plan", "solve", "solve", "manage", "solve", "solve", "manage"]

    store = get_store(db)
    recorded = store.selections(run_id)
    assert (recorded[1].rollout_id, recorded[1].kept_previous, recorded[1].rule) == (first, True, rule)
    assert (recorded[0].rollout_id, recorded[0].kept_previous) == (first, False)
    # no rollout of round 2 was selected; round 1's keeps its rank
    assert [(r.iteration, r.rank) for r in store.rollouts(run_id)] == [(0, 0), (0, 1), (1, 1), (1, 2)]
    # what the report re-grades and the predictions show: round 1's rollout, twice
    assert [row.id for row in store.chosen_rows([run_id])[run_id]] == [first, first]


def test_a_vote_counts_the_previous_best_as_one_voter(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    """The vote is a vote: two agreeing rollouts outvote the previous best (2-1)."""
    model = TrtModel(plan=plan_reply("A", "B"), reflect=[reflect_reply(["C", "D"])], solve=CHAMPION)
    server = scripted(model).start()
    final, steps = run_recorded(server, tmp_path / "vote.db", strategy="trt", iterations=2, select_rule="vote")
    assert final["answers"] == ["5", "9"]
    assert steps[1]["selection"]["votes"] == {"5": 1.0, "9": 2.0} and steps[1]["selection"]["rule"] == "vote"
    assert "kept_previous" not in steps[1]["selection"]
    assert final["reference"] == ": Solved with C." and final["best"]["rollout_id"].endswith(":1:0")


def test_ties_say_how_they_were_settled(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    # one thinker (no log-probabilities asked for): round 2's 1-1 tie with the previous best goes to the first
    # listed candidate, the previous best
    model = TrtModel(plan=plan_reply("A"), reflect=[reflect_reply(["C"])], solve={"A": ("5", -0.1), "C": ("9", -0.01)})
    server = scripted(model).start()
    db = tmp_path / "tie.db"
    final, steps = run_recorded(server, db, strategy="trt", thinkers=1, iterations=3)
    assert not any(r.body.get("logprobs") for r in of_kind(server, "solve"))
    assert final["answers"] == ["5", "5", "5"]
    assert steps[1]["selection"]["rule"] == "vote (tie: thinker order)" and steps[1]["selection"]["kept_previous"]
    # the next prompts say so
    assert "Round 2 (selected answer: 5, the best answer so far kept):\n- C: answer 9 (disagrees)\n" in (
        of_kind(server, "solve")[2].prompt
    )
    assert "is 5 (the best answer so far, kept from an earlier round)." in of_kind(server, "reflect")[1].prompt

    # two thinkers (log-probabilities): 1-1 in round 1, then 1-1-1 with the previous best in round 2
    model = TrtModel(
        plan=plan_reply("A", "B"),
        reflect=[reflect_reply(["C", "D"])],
        solve={"A": ("5", -2.0), "B": ("7", -3.0), "C": ("9", -0.5), "D": ("7", -0.4)},
    )
    server = scripted(model).start()
    db = tmp_path / "confident.db"
    final, steps = run_recorded(server, db, strategy="trt", iterations=2)
    assert final["answers"] == ["5", "7"]
    assert [s["selection"]["rule"] for s in steps] == ["vote (tie: confidence)"] * 2
    shown = run_kflow(["show", "s", "--db", str(db), "--json"])
    assert shown.returncode == 0, shown.stderr
    payload = json.loads(shown.stdout)
    assert [s["rule"] for s in payload["selections"]] == ["vote (tie: confidence)"] * 2
    assert [r["rule"] for r in payload["trt"]["rounds"]] == ["vote (tie: confidence)"] * 2
    text = run_kflow(["show", "s", "--db", str(db)])
    assert text.returncode == 0, text.stderr
    assert text.stdout.count("vote (tie: confidence)") == 2


def test_the_manager_call_its_json_and_its_prompt(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    """kf-qwen's rules: the manager selects (the default there), every round; it sees each candidate's final
    text (not its reasoning), the lessons and the strategy history; its lesson is kept with no failure seen."""
    model = TrtModel(
        plan=plan_reply("A", "B"),
        manage=[
            manage_reply(2, ["C", "D"], "one"),  # round 1: both agree; solution 2 (B) is chosen
            manage_reply(3, ["E", "F"], "two", disable=1),
            manage_reply(1, ["G", "H"], "three"),  # the last round: strategies are not taken
        ],
        solve={"A": ("5", -0.1), "B": ("5", -0.2), "C": ("5", -0.3), "D": ("8", -0.4), "E": ("5", -0.1)},
        reasoning="private scratch work of",
    )
    model.solve = {**model.solve, "F": ("5", -0.1)}
    server = scripted(model).start()
    db = tmp_path / "manager.db"
    final, steps = run_recorded(server, db, strategy="trt", iterations=3, prompts="kf-qwen")
    run_id = final["run_id"]
    assert final["params"]["select_rule"] == "manager" and final["params"]["prompt_set"] == "kf-qwen"
    assert kinds(server) == ["plan", *(["solve", "solve", "manage"] * 3)]

    # round 1: solution 2 is thinker B's rollout; round 2: solution 3 is thinker D's (answer 8), chosen by the
    # manager against the 2-1 vote; round 3: the previous best (8) is solution 1
    assert [s["selection"]["rule"] for s in steps] == ["manager"] * 3
    assert [s["selection"]["rollout_id"] for s in steps] == [f"{run_id}:0:1", f"{run_id}:1:1", f"{run_id}:1:1"]
    assert final["answers"] == ["5", "8", "8"] and steps[2]["selection"]["kept_previous"]

    prompts = [r.prompt for r in of_kind(server, "manage")]
    assert "### Solution 1\nStrategy: A (try A)\nAnswer: 5\n[Summary]: Solved with A.\n" in prompts[0]
    assert "private scratch work" not in prompts[0]  # the final text, after the reasoning
    assert "### Solution 3" not in prompts[0] and "### Solution 3\nStrategy: D (try D)\nAnswer: 8\n" in prompts[1]
    assert "1. Pattern: pattern one\n" in prompts[1]  # the lesson of round 1, kept though all agreed
    assert "Round 1 (selected answer: 5):\n- A: answer 5 (agrees)\n- B: answer 5 (selected)\n" in prompts[1]
    assert "Propose 2 strategies for the next round" in prompts[1]
    assert "3. Strategies. None: this was the last round" in prompts[2]
    assert "Round 2 (selected answer: 8):" in prompts[2]

    # what each reply changed: strategies for the next round (not after the last), lessons, a disabled item
    assert [s["thinker_strategies"][0]["key_technique"] for s in steps] == ["C", "E", "E"]
    assert steps[2]["reflection"]["strategies"] == []  # none after the last round
    assert [[(i["lesson"]["pattern"], bool(i.get("disabled"))) for i in s["knowledge"]] for s in steps] == [
        [("pattern one", False)],
        [("pattern one", True), ("pattern two", False)],
        [("pattern one", True), ("pattern two", False), ("pattern three", False)],
    ]
    store = get_store(db)
    calls = store.calls(run_id)
    assert [c.id.split(":", 1)[1] for c in calls] == ["0:plan", "0:manage", "1:manage", "2:manage"]
    assert calls[2].outcome is not None and calls[2].outcome["selected_solution_id"] == 3
    assert calls[2].outcome["rollout_id"] == f"{run_id}:1:1" and calls[2].outcome["disabled"] == 1
    assert final["usage"]["completion_tokens"] == sum(r.completion_tokens for r in store.rollouts(run_id)) + sum(
        c.completion_tokens for c in calls
    )
    rounds = json.loads(run_kflow(["show", "s", "--db", str(db), "--json"]).stdout)["trt"]["rounds"]
    assert [(r["selected_answer"], r["rule"], r["kept_previous"]) for r in rounds] == [
        ("5", "manager", False),
        ("8", "manager", False),
        ("8", "manager", True),
    ]
    assert rounds[0]["reflection_after"]["outcome"]["added"].startswith("Pattern: pattern one")


def test_bad_manager_replies_fall_back(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    """No JSON: the vote decides and the strategies stay; an invalid choice with good strategies and a lesson:
    the vote decides, the rest is applied; a failed call: the vote decides, nothing else changes."""
    model = TrtModel(
        plan=plan_reply("A", "B"),
        manage=[
            "I cannot decide {not json",
            json.dumps(
                {
                    "selected_solution_id": 9,
                    "strategies": [{"key_technique": "C", "what_to_try": "c"}] * 2,
                    "reflection": "Plain text lesson.",
                }
            ),
            Reply(content="", status=400),
        ],
        solve={"A": ("5", -0.1), "B": ("7", -0.5), "C": ("7", -0.3)},
    )
    server = scripted(model).start()
    final, steps = run_recorded(
        server, tmp_path / "bad.db", strategy="trt", iterations=3, select_rule="manager", prompts="kf-gpt-oss"
    )
    assert kinds(server) == ["plan", *(["solve", "solve", "manage"] * 3)]
    # round 1: 5 and 7 tie, confidence settles it; round 2 (A, B again): 5 twice with the previous best; round 3
    # (C, C from the second reply): 7 twice against the previous best
    rules = [s["selection"]["rule"] for s in steps]
    assert rules == ["vote (no verdict; tie: confidence)", "vote (no verdict)", "vote (no verdict)"]
    assert final["answers"] == ["5", "5", "7"]
    assert steps[0]["thinker_strategies"] == [
        {"key_technique": "A", "what_to_try": "try A"},
        {"key_technique": "B", "what_to_try": "try B"},
    ]
    assert steps[0]["reflection"]["note"] == "no JSON object in the reply" and steps[0]["knowledge"] == []
    assert steps[1]["reflection"]["note"] == "no valid selected_solution_id: the vote decides"
    assert steps[1]["thinker_strategies"] == [{"key_technique": "C", "what_to_try": "c"}] * 2
    assert steps[1]["reflection"]["added"] == "Key insight: Plain text lesson."  # a lesson written as text
    assert steps[2]["reflection"]["note"] == "the call failed" and steps[2]["knowledge"] == steps[1]["knowledge"]
    assert steps[2]["thinker_strategies"] == steps[1]["thinker_strategies"]
    calls = get_store(tmp_path / "bad.db").calls(final["run_id"])
    assert [c.error is not None for c in calls] == [False, False, False, True]
    assert [(c.outcome or {}).get("selected_solution_id") for c in calls[1:]] == [None, None, None]


def test_replaying_a_managed_round_pays_for_nothing(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    """The manager call is stored before it is used: running any step again (forking the thread from each of
    its checkpoints) reads it back and sends no request."""
    model = TrtModel(
        plan=plan_reply("A", "B"),
        manage=[manage_reply(2, ["C", "D"], "one"), manage_reply(1)],
        solve=CHAMPION,
    )
    server = scripted(model).start()
    db = tmp_path / "replay.db"
    final, _ = run_recorded(server, db, strategy="trt", iterations=2, select_rule="manager")
    sent = len(server.requests)
    assert kinds(server).count("manage") == 2 and final["answers"] == ["5", "5"]

    silent = scripted(lambda _request: Reply(content="", status=500)).start()
    checkpointer = SqliteCheckpointer(db)
    try:
        graph = compile_graph(checkpointer)
        config: Any = {"configurable": {"thread_id": "s"}}
        replayed = []
        for snapshot in graph.get_state_history(config):
            if snapshot.next and snapshot.next[0] in ("manage", "distill_knowledge", "solve"):
                result = graph.invoke(
                    None, snapshot.config, context=Context(base_url=silent.base_url, db_path=str(db), max_retries=0)
                )
                assert result["answers"] == final["answers"] and result["knowledge"] == final["knowledge"]
                replayed.append(snapshot.next[0])
        assert replayed.count("manage") == 2
    finally:
        checkpointer.close()
    assert not silent.requests and len(server.requests) == sent


def own_selection_templates(tmp_path: Path) -> str:
    """kf-instruct with a verifier and a manager that render only some of the candidate variables."""
    source = load_prompt_set("kf-instruct").source
    for key, body in (
        (
            "verify",
            VERIFY_MARK + "{% for c in candidates %}<{{ c.number }}|{{ c.previous_best }}|{{ c.text }}>{% endfor %}",
        ),
        ("manage", MANAGE_MARK + "{{ candidates | length }}: {% for c in candidates %}#{{ c.number }} {% endfor %}"),
    ):
        start = source.index(f"\n{key} = '''")
        end = source.index("'''", start + len(key) + 8) + 3
        source = source[:start] + f"\n{key} = '''{body}'''" + source[end:]
    path = tmp_path / "own.toml"
    path.write_text(source.replace('name = "kf-instruct"', 'name = "own"'))
    return str(path)


@pytest.mark.parametrize("rule", ["verifier", "manager"])
def test_a_prompt_set_renders_any_subset_of_the_candidate_variables(
    scripted: type[ScriptedServer], tmp_path: Path, rule: str
) -> None:
    model = champion()
    server = scripted(model).start()
    prompts = own_selection_templates(tmp_path)
    final, _ = run_recorded(
        server, tmp_path / "own.db", strategy="trt", iterations=2, select_rule=rule, prompts=prompts
    )
    assert final["answers"] == ["5", "5"]
    sent = [r.prompt for r in server.requests if kind_of(r) in ("verify", "manage")]
    text = "[Summary]: Solved with {}.\n[Answer]: Therefore, final answer is \\boxed{{{}}}."
    if rule == "verifier":
        shown = f"<1|True|{text.format('A', 5)}><2|False|{text.format('C', 9)}><3|False|{text.format('D', 9)}>"
        assert sent == [VERIFY_MARK + shown]
    else:
        assert sent == [MANAGE_MARK + "2: #1 #2 ", MANAGE_MARK + "3: #1 #2 #3 "]


def test_the_manager_from_the_command_line(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    model = TrtModel(
        plan=plan_reply("A"),
        manage=[manage_reply(1, ["C"]), manage_reply(1)],
        solve={"A": ("5", -0.1), "C": ("9", -0.1)},
    )
    server = scripted(model).start()
    db = tmp_path / "cli.db"
    args = ["solve", "Find x.", "--strategy", "trt", "--thinkers", "1", "--iterations", "2", "--select-rule", "manager"]
    solved = run_kflow([*args, "--db", str(db), "--base-url", server.base_url])
    assert solved.returncode == 0, solved.stderr
    assert kinds(server) == ["plan", "solve", "manage", "solve", "manage"]
    assert "rollout 1: answer 5 (the previous best kept)" in solved.stderr


def test_an_evaluation_regrades_and_writes_the_kept_previous_best(
    scripted: type[ScriptedServer], tmp_path: Path
) -> None:
    """`kflow report --answer-rule` and the predictions files follow each round's selection: a round that kept
    the previous best is graded on that rollout's output, not on one of its own."""
    data = tmp_path / "one.jsonl"
    data.write_text(json.dumps({"problem": PROBLEM, "answer": "5"}) + "\n")
    server = scripted(champion()).start()
    db = tmp_path / "eval.db"
    args = ["eval", "--dataset", str(data), "--iterations", "2", "--base-url", server.base_url, "--db", str(db)]
    proc = run_kflow(
        [*args, "--strategy", "trt", "--select-rule", "manager", "--eval-id", "e", "--output-dir", str(tmp_path)]
    )
    assert proc.returncode == 0, proc.stderr
    assert kinds(server) == ["plan", "solve", "solve", "manage", "solve", "solve", "manage"]
    report = run_kflow(["report", "e", "--db", str(db), "--answer-rule", "last-boxed", "--json"])
    assert report.returncode == 0, report.stderr
    payload = json.loads(report.stdout)
    assert [f["accuracy"] for f in payload["per_iteration"]] == [1.0, 1.0] and payload["final_accuracy"] == 1.0
    files = sorted(tmp_path.glob("vllm_512_*/*/predictions_*.json"))
    solutions = [json.loads(path.read_text())[1]["pred_solution"] for path in files]
    assert len(solutions) == 2 and solutions[0] == solutions[1] and "Solved with A." in solutions[1]


def test_a_tied_vote_of_any_strategy_is_recorded_and_shown(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    def respond(request: Request) -> Reply:  # one request with n = 2: 5 (less confident) and 7
        return Reply(content=kf_output("57"[request.choice], "s"), logprobs=[-2.0 if request.choice == 0 else -1.0])

    server = scripted(respond).start()
    db = tmp_path / "kf.db"
    final, steps = run_recorded(server, db, thinkers=2, iterations=1, select_rule="vote")
    assert [r.body.get("n") for r in server.requests] == [2]
    assert final["answers"] == ["7"] and steps[0]["selection"]["rule"] == "vote (tie: confidence)"
    text = run_kflow(["show", "s", "--db", str(db)])
    assert text.returncode == 0, text.stderr
    assert "select rule vote, as applied where it differs: iteration 0: vote (tie: confidence)" in text.stdout
