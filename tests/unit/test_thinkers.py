from __future__ import annotations

import math

from knowledge_flow.records import Candidate
from knowledge_flow.strategies.thinkers import agreement, next_range, score, select, similarity, spread
from tests.support.candidates import candidate


def cand(rid: str, answer: str | None, summary: str, confidence: float | None) -> Candidate:
    return candidate(rid, answer, summary, confidence)


def test_spread() -> None:
    assert spread(0.2, 1.0, 3) == [0.2, 0.6, 1.0]
    assert spread(0.6, 0.6, 4) == [0.6] * 4
    assert spread(0.5, 0.7, 1) == [0.6]


def test_score_without_logprobs_is_lowest() -> None:
    assert score(cand("a", "1", "", None)) == -math.inf


def test_similarity() -> None:
    a = cand("a", "5", "count the pairs", -1)
    assert similarity(a, cand("b", "5", "count the pairs", -1), "integer") == 1.0
    assert similarity(a, cand("c", "6", "something else", -1), "integer") == 0.0
    assert similarity(a, cand("d", "6", "count the pairs", -1), "integer") == 0.5


def test_select_by_confidence_then_diversity() -> None:
    a = cand("a", "5", "x y", -0.1)
    b = cand("b", "5", "x y", -0.2)
    c = cand("c", "7", "p q", -0.3)
    assert [k["rollout_id"] for k in select([a, b, c], 2, 0.0, "integer")] == ["a", "b"]
    assert [k["rollout_id"] for k in select([a, b, c], 2, 1.0, "integer")] == ["a", "c"]
    assert [k["rollout_id"] for k in select([c], 3, 1.0, "integer")] == ["c"]


def test_select_without_logprobs_keeps_first_answered() -> None:
    none = cand("n", None, "", None)
    first = cand("f", "3", "", None)
    assert select([none, first], 1, 0.0, "integer")[0]["rollout_id"] == "f"


def test_agreement_and_next_range() -> None:
    same = [cand(str(i), "5", "", -0.1) for i in range(3)]
    mixed = [cand("a", "1", "", -0.1), cand("b", "2", "", -0.1), cand("c", "3", "", -0.1)]
    assert agreement(same, "integer") == 1.0
    assert agreement(mixed, "integer") == 1 / 3
    assert next_range([0.4, 0.8], mixed, None, "integer") == [0.3, 0.9]
    assert next_range([0.4, 0.8], same, None, "integer") == [0.45, 0.75]
    assert next_range([0.4, 0.8], same, -0.01, "integer") == [0.4, 0.8]  # agreement but not confident
    assert next_range([0.0, 2.0], mixed, None, "integer") == [0.0, 2.0]
