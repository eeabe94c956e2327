"""Each strategy's exact knowledge-state evolution over several rollouts, against the scripted server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from knowledge_flow.persistence import get_store
from knowledge_flow.text.sentences import tail_sentences
from tests.integration.scripts import PAPER_SET
from tests.integration.strategy_support import PROBLEM, run_recorded
from tests.support import legacy_prompts as prompts
from tests.support.scripted_server import Reply, Request, ScriptedServer, kf_output, script_responder
from tests.support.stored import checkpoint_payloads


def avoid_output(avoid: str, answer: str, summary: str) -> str:
    return (
        f"[Things to Avoid]: {avoid}\n[Summary]: {summary}\n[Answer]: Therefore, final answer is \\boxed{{{answer}}}."
    )


def test_regeneration_replaces_and_trims_the_list(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    long_avoid = " ".join(f"Answer {n} is wrong because case {n} was counted twice." for n in range(40))
    script = [
        avoid_output("Answer 4 is wrong. It misses negatives.", "8", "S0"),
        avoid_output("Answer 8 is wrong. It misses the axes.", "12", "S1"),
        "[Summary]: S2\n[Answer]: \\boxed{12}",  # no list: the old one stays
        avoid_output(long_avoid, "12", "S3"),
    ]
    server = scripted(script_responder({"default": script})).start()
    final, steps = run_recorded(
        server, tmp_path / "r.db", strategy="regeneration", iterations=4, avoid_budget_tokens=60
    )
    texts = [[item["text"] for item in step["knowledge"]] for step in steps]
    assert texts[0] == [": Answer 4 is wrong. It misses negatives."]  # the section's raw text
    assert texts[1] == [": Answer 8 is wrong. It misses the axes."]
    assert texts[2] == texts[1]
    trimmed = tail_sentences(": " + long_avoid, 60)
    assert texts[3] == [trimmed]
    assert trimmed.startswith("Answer ") and trimmed.endswith("counted twice.") and len(trimmed) < len(long_avoid)
    assert all(item["wrong_answer"] is None for step in steps for item in step["knowledge"])
    prompts_sent = [r.prompt for r in server.requests]
    assert prompts_sent[0] == prompts.regeneration_rollout(PROBLEM, 0, None, None, "integer")
    assert prompts_sent[1] == prompts.regeneration_rollout(
        PROBLEM, 1, "S0", "Answer 4 is wrong. It misses negatives.", "integer"
    )
    assert prompts_sent[3] == prompts.regeneration_rollout(
        PROBLEM, 3, "S2", "Answer 8 is wrong. It misses the axes.", "integer"
    )
    assert "[Things to Avoid]: A standalone list of max 10 answers to avoid" in prompts_sent[0]
    assert final["answers"] == ["8", "12", "12", "12"]


def ek_output(adding: str, novel: str, dropping: str, target: str, answer: str, summary: str) -> str:
    return (
        "[Solution without EK]: tried directly.\n"
        f"[Adding?]: {adding}\n"
        f"[Novel Knowledge to Add to the List]: {novel}\n"
        "[Reason to make this addition]: it helps.\n"
        f"[Dropping?]: {dropping}\n"
        f"[Least Useful to Drop]: {target}\n"
        "[Why that knowledge should be dropped?]: superseded.\n"
        f"[Summary]: {summary}\n[Answer]: \\boxed{{{answer}}}"
    )


def test_positive_knowledge_adds_and_drops(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    ek = {n: f"TRIGGER: t{n}. STEPS: s{n}. WORKED EXAMPLE: e{n}. PITFALL: p{n}." for n in range(1, 6)}
    script = [
        f"[Novel Knowledge to Add to the List]: {ek[1]}\n[Summary]: S0\n[Answer]: \\boxed{{8}}",
        ek_output("Yes", ek[2], "No", "N/A", "12", "S1"),
        ek_output("No", ek[3], "Yes", '"Experimental Knowledge 1"', "12", "S2"),
        ek_output("Yes", "word " * 1100, "No", "N/A", "12", "S3"),  # too long: not added
        ek_output("Yes", ek[4], "Yes", "EK 7", "12", "S4"),  # no item 7: nothing dropped
    ]
    server = scripted(script_responder({"default": script})).start()
    final, steps = run_recorded(server, tmp_path / "p.db", strategy="positive-knowledge", iterations=5)
    texts = [[item["text"] for item in step["knowledge"]] for step in steps]
    assert texts == [[ek[1]], [ek[1], ek[2]], [ek[2]], [ek[2]], [ek[2], ek[4]]]
    assert [item["iteration"] for item in final["knowledge"]] == [1, 4]
    sent = [r.prompt for r in server.requests]
    assert sent[0] == prompts.positive_rollout(PROBLEM, 0, None, [], "integer")
    assert sent[2] == prompts.positive_rollout(PROBLEM, 2, "S1", steps[1]["knowledge"], "integer")
    assert f"## Experimental Knowledge List\n**EK 1**\n{ek[1]}\n\n**EK 2**\n{ek[2]}\n\n" in sent[2]


def test_positive_knowledge_keeps_at_most_ten(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    script = ["[Novel Knowledge to Add to the List]: K0\n[Summary]: S\n[Answer]: \\boxed{1}"] + [
        ek_output("Yes", f"K{n}", "No", "N/A", "1", "S") for n in range(1, 12)
    ]
    server = scripted(script_responder({"default": script})).start()
    final, _ = run_recorded(server, tmp_path / "p.db", strategy="positive-knowledge", iterations=12)
    assert [item["text"] for item in final["knowledge"]] == [f"K{n}" for n in range(2, 12)]


def test_markovian_continues_the_tail(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    first = " ".join(f"Step {n}: we consider case {n} and count it." for n in range(60)) + " So far \\boxed{7}."
    script = [first, " Continuing, the count is 12. Hence \\boxed{12}.", " More thought, no box here."]
    server = scripted(script_responder({"default": script})).start()
    final, steps = run_recorded(server, tmp_path / "m.db", strategy="markovian", iterations=3, max_new_tokens=200)
    bodies = [r.body for r in server.requests]
    assert bodies[0]["messages"] == [{"role": "user", "content": prompts.markovian_user(PROBLEM)}]
    assert "continue_final_message" not in bodies[0]
    assert all(b["max_tokens"] == 100 for b in bodies)
    tail = tail_sentences(first, 90)
    assert len(tail) < len(first) and tail.endswith("\\boxed{7}.")
    assert bodies[1]["messages"] == [
        {"role": "user", "content": prompts.markovian_user(PROBLEM)},
        {"role": "assistant", "content": f"{tail}\n\nWait, just keep thinking."},
    ]
    # the model answers in a new assistant turn after the kept text, as in the original scripts
    assert "continue_final_message" not in bodies[1] and "add_generation_prompt" not in bodies[1]
    trace = f"{tail}\n\nWait, just keep thinking." + script[1]
    assert bodies[2]["messages"][1]["content"] == f"{tail_sentences(trace, 90)}\n\nWait, just keep thinking."
    # answers come from the new continuation only: the third has none, although its prefix has a box
    assert final["answers"] == ["7", "12", None]
    assert all(step["knowledge"] == [] and step["reference"] is None for step in steps)


def test_self_consistency_majority(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    answers = ["3", "5", "3", "5", "5", "3"]
    script = [kf_output(a, f"S{i}") for i, a in enumerate(answers)]
    server = scripted(script_responder({"default": script})).start()
    final, steps = run_recorded(server, tmp_path / "sc.db", strategy="self-consistency", iterations=6)
    assert all(r.prompt == prompts.first_rollout(PROBLEM, "integer") for r in server.requests)
    assert final["answers"] == answers
    assert final["final_answer"] == "3"  # 3 and 5 tie at three each: the latest (3) wins
    assert all(step["knowledge"] == [] for step in steps)


def test_stable_stop_policy_and_majority_window(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    script = [
        kf_output("5", "S0"),
        kf_output("7", "S1", "The Answer cannot be 5, because x."),
        kf_output("7", "S2", "N/A"),
        kf_output("7", "S3", "N/A"),
        kf_output("9", "S4", "The Answer cannot be 7, because y."),
    ]
    server = scripted(script_responder({"default": script})).start()
    final, _ = run_recorded(
        server, tmp_path / "st.db", iterations=5, stop_policy="stable:2", final_answer_rule="majority:3"
    )
    # iteration 1 changed the answer (with a report); iterations 2 and 3 agree without reports: stop after 4
    assert final["answers"] == ["5", "7", "7", "7"]
    assert final["stopped_early"] is True
    assert final["final_answer"] == "7"
    assert len(server.requests) == 4


def thinker_responder(confidence: dict[float, float], answers: dict[float, str]) -> object:
    def respond(request: Request) -> Reply:
        t = float(request.body["temperature"])
        k = 0 if "## Reference Solution" not in request.prompt else 1
        answer = answers[t] if k else "5"
        report = None if k == 0 else ("N/A" if answer == "5" else f"The Answer cannot be 5, because t={t}.")
        return Reply(content=kf_output(answer, f"summary at t={t} k={k}", report), logprobs=[confidence[t]] * 3)

    return respond


def test_thinkers_spread_score_select_and_feed_knowledge(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    confidence = {0.2: -0.9, 0.6: -0.1, 1.0: -0.5}
    answers = {0.2: "7", 0.6: "9", 1.0: "5"}
    server = scripted(thinker_responder(confidence, answers)).start()  # type: ignore[arg-type]
    db = tmp_path / "t.db"
    final, _ = run_recorded(
        server,
        db,
        iterations=2,
        thinkers=3,
        topk_thinkers=2,
        min_temperature=0.2,
        max_temperature=1.0,
        prompts=PAPER_SET,
    )
    temps = sorted(float(r.body["temperature"]) for r in server.requests)
    assert temps == [0.2, 0.2, 0.6, 0.6, 1.0, 1.0]
    assert all(r.body.get("logprobs") is True for r in server.requests)
    # iteration 1: best is t=0.6 (answer 9); second kept is t=1.0 (-0.5 beats -0.9), which kept answer 5
    assert final["answers"] == ["5", "9"]
    assert final["reference"] == ": summary at t=0.6 k=1"  # the summary's raw text
    assert [(i["wrong_answer"], i["text"]) for i in final["knowledge"]] == [
        ("5", ": The Answer cannot be 5, because t=0.6.")
    ]
    store = get_store(db)
    rows = store.rollouts(final["run_id"])
    ranks = {(r.iteration, r.temperature): r.rank for r in rows}
    assert ranks[(1, 0.6)] == 0 and ranks[(1, 1.0)] == 1 and ranks[(1, 0.2)] is None
    assert rows[0].confidence == pytest.approx(confidence[rows[0].temperature])
    assert final["usage"]["completion_tokens"] == sum(r.completion_tokens for r in rows)


def test_diversity_weight_prefers_a_different_answer(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    confidence = {0.2: -0.2, 0.6: -0.1, 1.0: -0.6}
    answers = {0.2: "9", 0.6: "9", 1.0: "7"}
    server = scripted(thinker_responder(confidence, answers)).start()  # type: ignore[arg-type]
    final, _ = run_recorded(
        server,
        tmp_path / "d.db",
        iterations=2,
        thinkers=3,
        topk_thinkers=2,
        min_temperature=0.2,
        max_temperature=1.0,
        diversity_weight=2.0,
        prompts=PAPER_SET,
    )
    # kept: t=0.6 (best), then t=1.0 beats t=0.2 (same answer 9, penalised): both reports feed the list
    assert [i["text"] for i in final["knowledge"]] == [
        ": The Answer cannot be 5, because t=0.6.",
        ": The Answer cannot be 5, because t=1.0.",
    ]


def test_uncertainty_threshold_keeps_the_reference(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    confidence = {0.2: -3.0, 0.6: -2.5, 1.0: -4.0}
    answers = {0.2: "7", 0.6: "9", 1.0: "5"}
    server = scripted(thinker_responder(confidence, answers)).start()  # type: ignore[arg-type]
    final, steps = run_recorded(
        server,
        tmp_path / "u.db",
        iterations=2,
        thinkers=3,
        min_temperature=0.2,
        max_temperature=1.0,
        uncertainty_threshold=-1.0,
    )
    assert final["answers"] == ["5", "9"]
    assert steps[0]["reference"] == ": summary at t=0.6 k=0"
    assert final["reference"] == steps[0]["reference"]  # iteration 1 too uncertain to replace it
    assert final["reference_answer"] == "5"


def test_dynamic_temperature_widens_on_disagreement(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    confidence = {0.4: -0.5, 0.6: -0.4, 0.8: -0.3}
    answers = {0.4: "1", 0.6: "2", 0.8: "3"}

    def respond(request: Request) -> Reply:
        t = round(float(request.body["temperature"]), 4)
        return Reply(
            content=kf_output(answers.get(t, "4") if t in answers else str(t), "s"), logprobs=[confidence.get(t, -1.0)]
        )

    server = scripted(respond).start()
    _, steps = run_recorded(
        server,
        tmp_path / "dt.db",
        iterations=2,
        thinkers=3,
        min_temperature=0.4,
        max_temperature=0.8,
        dynamic_temperature=True,
    )
    assert steps[0]["temperature_range"] == [0.3, 0.9]  # three different answers: the spread widens by half
    second = sorted(round(float(r.body["temperature"]), 4) for r in server.requests[3:])
    assert second == [0.3, 0.6, 0.9]


def test_one_request_with_n_when_honoured_and_fallback(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    server = scripted(script_responder({"default": [kf_output("5", "s")]})).start()
    run_recorded(server, tmp_path / "n.db", iterations=1, thinkers=3)
    assert len(server.requests) == 1 and server.requests[0].body["n"] == 3
    single = scripted(script_responder({"default": [kf_output("5", "s")]}), honour_n=False).start()
    final, _ = run_recorded(single, tmp_path / "n1.db", iterations=1, thinkers=3)
    assert [r.body.get("n") for r in single.requests] == [3, 1, 1]
    assert len(get_store(tmp_path / "n1.db").rollouts(final["run_id"])) == 3


def test_gpt_oss_family_reasoning_field_and_effort(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    def respond(request: Request) -> Reply:
        return Reply(
            content=kf_output("12", "final summary"),
            reasoning="long analysis \\boxed{99}",
            reasoning_key="reasoning_content",
        )

    server = scripted(respond).start()
    db = tmp_path / "g.db"
    final, _ = run_recorded(server, db, iterations=1, model="openai/gpt-oss-120b")
    assert final["params"]["model_family"] == "gpt-oss"
    assert server.requests[0].body["reasoning_effort"] == "high"
    assert final["answers"] == ["12"]  # read from the final content, not the reasoning
    row = get_store(db).rollouts(final["run_id"])[0]
    assert row.reasoning == "long analysis \\boxed{99}"


def test_qwen3_thinking_inline_think_and_reasoning_parser(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    inline = "<think>Let me try \\boxed{3}.\n[Summary]: draft</think>\n[Summary]: clean\n[Answer]: \\boxed{12}"
    server = scripted(script_responder({"default": [inline]})).start()
    db = tmp_path / "q.db"
    final, _ = run_recorded(server, db, iterations=1, model="Qwen/Qwen3-235B-A22B-Thinking-2507", prefill="<think>\n")
    assert final["params"]["model_family"] == "qwen3-thinking"
    assert "reasoning_effort" not in server.requests[0].body
    assert server.requests[0].body["messages"][-1] == {"role": "assistant", "content": "<think>\n"}
    assert server.requests[0].body["continue_final_message"] is True
    assert final["answers"] == ["12"] and final["reference"] == ": clean"

    def parsed(request: Request) -> Reply:  # vLLM with --reasoning-parser qwen3: reasoning in its own field
        return Reply(
            content="[Summary]: clean\n[Answer]: \\boxed{12}",
            reasoning="thinking \\boxed{3}",
            reasoning_key="reasoning",
        )

    server2 = scripted(parsed).start()
    final2, _ = run_recorded(server2, tmp_path / "q2.db", iterations=1, model="Qwen/Qwen3-235B-A22B-Thinking-2507")
    assert final2["answers"] == ["12"]
    row = get_store(tmp_path / "q2.db").rollouts(final2["run_id"])[0]
    assert row.reasoning == "thinking \\boxed{3}"


def test_instruct_family_sends_no_reasoning_effort(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    server = scripted(script_responder({"default": [kf_output("1", "s")]})).start()
    final, _ = run_recorded(server, tmp_path / "i.db", iterations=1, model="Qwen2.5-7B-Instruct")
    assert final["params"]["model_family"] == "instruct"
    assert "reasoning_effort" not in server.requests[0].body
    assert json.loads(json.dumps(final["params"]))["thinkers"] == 1


def test_positive_knowledge_keeps_long_sections_out_of_state(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    long_solution = "WORKED-OUT-SOLUTION " * 300
    script = [
        "[Novel Knowledge to Add to the List]: K0\n[Summary]: S\n[Answer]: \\boxed{1}",
        ek_output("Yes", "K1", "No", "N/A", "1", "S").replace("tried directly.", long_solution),
    ]
    server = scripted(script_responder({"default": script})).start()
    db = tmp_path / "p.db"
    final, _ = run_recorded(server, db, strategy="positive-knowledge", iterations=2)
    assert [item["text"] for item in final["knowledge"]] == ["K0", "K1"]
    payloads = checkpoint_payloads(db)
    assert any(b"K1" in payload for payload in payloads)  # the knowledge is in the state
    assert not any(b"WORKED-OUT-SOLUTION" in payload for payload in payloads)
    assert any("WORKED-OUT-SOLUTION" in row.content for row in get_store(db).rollouts(final["run_id"]))
