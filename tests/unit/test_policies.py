from __future__ import annotations

import pytest

from knowledge_flow.strategies.policies import final_answer, parse_final_answer_rule, parse_stop_policy, should_stop


def test_parse() -> None:
    assert parse_stop_policy("fixed") is None
    assert parse_stop_policy("stable:3") == 3
    assert parse_final_answer_rule("last") == 0
    assert parse_final_answer_rule("majority:5") == 5
    assert parse_final_answer_rule("majority:all") is None
    for bad in ("stable", "stable:0", "stable:x", "early"):
        with pytest.raises(ValueError, match="stop policy"):
            parse_stop_policy(bad)
    for bad in ("first", "majority", "majority:0", "majority:-1"):
        with pytest.raises(ValueError, match="final answer rule"):
            parse_final_answer_rule(bad)


def test_fixed_runs_the_budget() -> None:
    assert not should_stop("fixed", 3, ["1", "1"], [False, False], "integer")
    assert should_stop("fixed", 3, ["1", "1", "1"], [False] * 3, "integer")


def test_stable() -> None:
    assert should_stop("stable:2", 10, ["5", "7", "7"], [False, True, False], "integer") is False
    assert should_stop("stable:2", 10, ["5", "7", "7", "07"], [False, True, False, False], "integer") is True
    assert should_stop("stable:2", 10, [None, None], [False, False], "integer") is False
    assert should_stop("stable:3", 10, ["1", "1"], [False, False], "integer") is False


def test_final_answer_rules() -> None:
    answers = ["1", "2", "2", "3", "1", None]
    assert final_answer("last", answers, "integer") is None
    assert final_answer("last", ["1", "2"], "integer") == "2"
    assert final_answer("majority:all", answers, "integer") == "1"  # 1 and 2 tie; 1 came later
    assert final_answer("majority:3", answers, "integer") == "1"
    assert final_answer("majority:2", ["4", "4", "5", "6"], "integer") == "6"
    assert final_answer("majority:all", [None, None], "integer") is None
    assert final_answer("last", [], "integer") is None
