"""TRT's select rules as configuration: the manager as the default of the sets that follow the reference, what
it needs, how ties are labelled, the candidates of a selection and the choice read from a reply."""

from __future__ import annotations

from pathlib import Path

import pytest

from knowledge_flow.params import resolve_params
from knowledge_flow.prompts import load_prompt_set
from knowledge_flow.records import Candidate, StoredRollout
from knowledge_flow.strategies.selection import candidate_views, choice_in, eligible, read_choice, with_previous
from knowledge_flow.strategies.thinkers import select, tie_break
from knowledge_flow.strategies.trt import SPEC
from knowledge_flow.strategies.trt_replies import apply_lessons, read_lesson
from knowledge_flow.text.tokens import EstimatedTokens
from tests.support.candidates import candidate


@pytest.mark.parametrize(
    ("model", "prompts", "rule", "failures_only"),
    [
        ("Qwen/Qwen3-235B-A22B-Thinking-2507", None, "manager", False),
        ("openai/gpt-oss-120b", None, "manager", False),
        ("local", None, "vote", True),
        ("local", "kf-qwen", "manager", False),
    ],
)
def test_the_sets_that_follow_the_reference_select_by_manager(
    model: str, prompts: str | None, rule: str, failures_only: bool
) -> None:
    params = resolve_params({"strategy": "trt", "model": model, "prompts": prompts})
    assert params["select_rule"] == rule
    rules = load_prompt_set(params["prompt_set"]).table(SPEC).rules
    assert rules.failures_only is failures_only
    # the run's own choice wins over the set's
    assert resolve_params({"strategy": "trt", "model": model, "select_rule": "vote"})["select_rule"] == "vote"
    # other strategies keep their own defaults with every set
    assert resolve_params({"model": model, "prompts": prompts})["select_rule"] == "confidence"


def test_the_manager_needs_trt_and_a_manage_template(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="select_rule manager needs a strategy with a manager prompt"):
        resolve_params({"select_rule": "manager"})
    source = load_prompt_set("kf-instruct").source
    start = source.index("\nmanage = '''")
    end = source.index("'''", start + len("\nmanage = '''")) + 3
    path = tmp_path / "no-manager.toml"
    path.write_text(source[:start] + source[end:])
    assert resolve_params({"strategy": "trt", "prompts": str(path)})["select_rule"] == "vote"
    with pytest.raises(ValueError, match=r"needs a 'manage' template in \[trt\] of prompt set 'kf-instruct'"):
        resolve_params({"strategy": "trt", "prompts": str(path), "select_rule": "manager"})


def test_ties_are_labelled_by_what_settled_them() -> None:
    def pool(*entries: tuple[str, str, float | None]) -> list[Candidate]:
        return [candidate(rid, answer, None, confidence) for rid, answer, confidence in entries]

    assert (
        tie_break(pool(("a", "5", -1.0), ("b", "5", -2.0), ("c", "7", -0.1)), "integer", "mean-logprob", False) is None
    )
    confident = pool(("a", "5", -1.0), ("b", "7", -0.5))
    assert tie_break(confident, "integer", "mean-logprob", False) == "confidence"
    assert [c["rollout_id"] for c in select(confident, 1, 0.0, "integer", rule="vote")] == ["b"]
    blind = pool(("a", "5", None), ("b", "7", None))
    assert tie_break(blind, "integer", "mean-logprob", False) == "thinker order"
    assert [c["rollout_id"] for c in select(blind, 1, 0.0, "integer", rule="vote")] == ["a"]
    equal = pool(("a", "5", -1.0), ("b", "7", -1.0), ("c", "7", None), ("d", "5", None))
    assert tie_break(equal, "integer", "mean-logprob", False) == "thinker order"
    assert tie_break(pool(("a", "5", -1.0)), "integer", "mean-logprob", False) is None
    assert tie_break([], "integer", "mean-logprob", False) is None
    # weighted: 12 against 5 + 6 is no tie
    measured = [
        candidate("a", "5", None, -3.0, measures={"lowest": 12.0}),
        candidate("b", "7", None, -0.1, measures={"lowest": 5.0}),
        candidate("c", "7", None, -0.2, measures={"lowest": 6.0}),
    ]
    assert tie_break(measured, "integer", "lowest", True) is None
    assert tie_break(measured, "integer", "lowest", False) is None  # 2 votes against 1


def test_the_manager_rule_falls_back_to_the_vote() -> None:
    pool = [candidate("a", "5", None, -1.0), candidate("b", "5", None, -1.0), candidate("c", "7", None, -3.0)]
    assert select(pool, 3, 0.0, "integer", rule="manager", chosen="c")[0]["rollout_id"] == "c"
    assert select(pool, 3, 0.0, "integer", rule="manager", chosen=None)[0]["rollout_id"] == "a"


class Texts:
    def __init__(self, texts: dict[str, StoredRollout]) -> None:
        self.texts = texts

    def stored_texts(self, rollout_id: str) -> StoredRollout | None:
        return self.texts.get(rollout_id)

    def best_rollout_id(self, run_id: str, iteration: int) -> str | None:
        return None


def test_candidates_of_a_selection_and_the_choice_read_back() -> None:
    best = candidate("r:0:1", "5", ": earlier", -0.5, thinker=1, strategy={"key_technique": "K", "what_to_try": "w"})
    now = [candidate("r:1:0", "9", "s", -0.1, thinker=0), candidate("r:1:1", None, None, None, thinker=1)]
    pool = with_previous(best, now)
    assert [c.get("previous_best", False) for c in pool] == [True, False, False]
    assert "previous_best" not in best and with_previous(None, now) == now
    assert [c["rollout_id"] for c in eligible(pool, "integer")] == ["r:0:1", "r:1:0"]
    reader = Texts(
        {
            "r:0:1": StoredRollout([], None, "<think>scratch</think>\nThe final text.", None),
            "r:1:0": StoredRollout([], None, "Answer text.", "separate reasoning"),
        }
    )
    views = candidate_views(eligible(pool, "integer"), reader)
    assert views == [
        {
            "number": 1,
            "thinker": 2,
            "answer": "5",
            "summary": ": earlier",
            "text": "The final text.",
            "previous_best": True,
            "key_technique": "K",
            "what_to_try": "w",
            "outcome": "previous best",
        },
        {
            "number": 2,
            "thinker": 1,
            "answer": "9",
            "summary": "s",
            "text": "Answer text.",
            "previous_best": False,
            "key_technique": None,
            "what_to_try": None,
            "outcome": "candidate",
        },
    ]
    assert choice_in('thinking {"x": 1} then {"selected_solution_id": "2", "strategies": []}', 2) == 2
    assert choice_in('{"ranking": [2, 1]}', 2) == 2 and choice_in('{"selected_solution_id": 3}', 2) is None
    assert choice_in('{"selected_solution_id": true}', 2) is None and choice_in("no json", 2) is None
    assert read_choice(None, 3) is None and read_choice({"selected_solution_id": 0}, 3) is None


def test_lessons_applied_from_a_reply() -> None:
    counter = EstimatedTokens()
    record = [
        {"wrong_answer": None, "text": "one", "iteration": 0, "tokens": 5},
        {"wrong_answer": None, "text": "two", "iteration": 1, "tokens": 5, "disabled": True},
        {"wrong_answer": None, "text": "three", "iteration": 2, "tokens": 5},
    ]
    reply = {"reflection": {"pattern": "P", "key_insight": "K"}, "disable_knowledge_id": 2}
    change = apply_lessons(record, reply, iteration=3, counter=counter, max_items=3)  # type: ignore[arg-type]
    assert [(i["text"], bool(i.get("disabled"))) for i in change.record] == [
        ("two", True),
        ("three", True),  # shown item 2 (the second active one)
        ("Pattern: P\nKey insight: K", False),
    ]
    assert (change.added, change.disabled, change.notes) == ("Pattern: P\nKey insight: K", 2, [])
    assert not record[2].get("disabled")  # the record given is not changed
    dropped = apply_lessons(
        record,  # type: ignore[arg-type]
        {"reflection": "text", "disable_knowledge_id": 7},
        iteration=3,
        counter=counter,
        max_items=5,
        drop_lesson="why not",
    )
    assert dropped.added is None and dropped.notes == ["no shown item 7 to disable", "why not"]
    assert read_lesson("  A lesson in plain words. ") == {
        "pattern": "",
        "when_to_use": [],
        "key_insight": "A lesson in plain words.",
        "observed_mistakes": [],
    }
    assert read_lesson("") is None and read_lesson(None) is None
