"""The knowledge-flow guard's rules (prompt-set rules of the top-level table), against the scripted server.

Each test runs a known answer sequence and checks, iteration by iteration, the reference, the Wrong Answer List
and which prompt (first = independent, later = with the reference) each rollout received."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from knowledge_flow.prompts import PromptSetError, load_prompt_set
from tests.integration.strategy_support import run_recorded
from tests.support.scripted_server import ScriptedServer, kf_output, script_responder

PAPER_RULES = 'items_per_wrong_answer = 2\nreport_section = "Error Report"\nitem_text = "report"\n'


def rules_set(tmp_path: Path, rules: str, name: str = "guarded") -> str:
    """kf-instruct's templates with the given top-level rules."""
    source = load_prompt_set("kf-instruct").source
    lines = source.splitlines()
    start = lines.index("[rules]")
    end = start + 1
    while end < len(lines) and re.match(r"^\w+\s*=", lines[end]):
        end += 1
    text = "\n".join([*lines[:start], "[rules]", *rules.strip().splitlines(), *lines[end:]]) + "\n"
    path = tmp_path / f"{name}.toml"
    path.write_text(re.sub(r'^name = ".*"$', f'name = "{name}"', text, count=1, flags=re.M))
    return str(path)


def report(wrong: str) -> str:
    return f"The Answer cannot be {wrong}, because of a slip. The correct approach is to recount."


SCRIPT = [
    kf_output("5", "S0"),
    kf_output("7", "S1", report("5")),  # 5 vs 7, one each: 5 stays the reference, 5 is not listed
    kf_output("7", "S2", report("5")),  # 7 now has two: it becomes the reference, 5 is listed
    kf_output("9", "S3", report("7")),  # 9 has one, 7 two: 7 stays, 7 is not listed
    kf_output("5", "S4", report("7")),  # 5 and 7 two each: a tie, nothing changes
]


def later(request_prompt: str) -> bool:
    return "## Reference Solution" in request_prompt


def run(scripted: type[ScriptedServer], tmp_path: Path, rules: str, **inputs: Any) -> tuple[Any, Any, Any]:
    server = scripted(script_responder({"default": SCRIPT})).start()
    final, steps = run_recorded(
        server, tmp_path / "g.db", iterations=len(SCRIPT), prompts=rules_set(tmp_path, rules), **inputs
    )
    return final, steps, server.requests


def test_plurality_reference_and_outvoted_list(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    final, steps, requests = run(
        scripted,
        tmp_path,
        PAPER_RULES + 'reference_rule = "plurality"\nlist_rule = "outvoted"\nfinal_answer = "majority:all"\n',
        final_answer_rule="majority:all",
    )
    assert final["answers"] == ["5", "7", "7", "9", "5"]
    assert [s["reference_answer"] for s in steps] == ["5", "5", "7", "7", "7"]
    assert [s["reference"] for s in steps] == [": S0", ": S0", ": S2", ": S2", ": S2"]
    assert [[i["wrong_answer"] for i in s["knowledge"]] for s in steps] == [[], [], ["5"], ["5"], ["5"]]
    assert final["knowledge"][0]["iteration"] == 2 and "cannot be 5" in final["knowledge"][0]["text"]
    assert [later(r.prompt) for r in requests] == [False, True, True, True, True]
    assert "S0" in requests[2].prompt and "Wrong answer: 5" not in requests[2].prompt
    assert "S2" in requests[3].prompt and "Wrong answer: 5" in requests[3].prompt
    assert final["final_answer"] == "5"  # 5 and 7 tie at two: the latest given wins


def test_the_paper_rules_follow_every_change(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    final, steps, requests = run(scripted, tmp_path, PAPER_RULES)
    assert [s["reference_answer"] for s in steps] == ["5", "7", "7", "9", "5"]
    assert [[i["wrong_answer"] for i in s["knowledge"]] for s in steps][-1] == ["5", "7", "9"]
    assert [later(r.prompt) for r in requests] == [False, True, True, True, True]
    assert final["final_answer"] == "5"


def test_independent_rollouts_on_ties_and_every_k(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    _, _, requests = run(
        scripted,
        tmp_path,
        PAPER_RULES + 'reference_rule = "plurality"\nlist_rule = "outvoted"\nindependent_on_tie = true\n',
    )
    # after 5, 7 (a tie) rollout 2 is independent; after 5, 7, 7 and 5, 7, 7, 9 it is not
    assert [later(r.prompt) for r in requests] == [False, True, False, True, True]
    (tmp_path / "v").mkdir()
    _, steps, confirm = run(
        scripted,
        tmp_path / "v",
        PAPER_RULES + 'reference_rule = "plurality"\nlist_rule = "outvoted"\nreference_min_votes = 2\n',
    )
    # the reference is shown only once two rollouts gave its answer (7, after rollout 2)
    assert [later(r.prompt) for r in confirm] == [False, False, False, True, True]
    assert [s["reference_answer"] for s in steps] == ["5", "5", "7", "7", "7"]
    (tmp_path / "k").mkdir()
    _, _, every = run(scripted, tmp_path / "k", PAPER_RULES + "independent_every = 2\n")
    assert [later(r.prompt) for r in every] == [False, True, False, True, False]


def test_guard_rules_are_checked(tmp_path: Path) -> None:
    for bad, field in (
        ('reference_rule = "vote"', "reference_rule"),
        ('list_rule = "never"', "list_rule"),
        ("independent_every = -1", "independent_every"),
        ("reference_min_votes = 0", "reference_min_votes"),
        ('final_answer = "mode"', "final_answer"),
    ):
        path = rules_set(tmp_path, PAPER_RULES + bad, name=field)
        with pytest.raises(PromptSetError, match=field):
            from knowledge_flow.strategies.knowledge_flow import SPEC

            load_prompt_set(path).table(SPEC)
