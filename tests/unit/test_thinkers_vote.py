"""Selection among thinkers: by vote, confidence-weighted vote, verifier, and a configurable score."""

from __future__ import annotations

from typing import Any

from knowledge_flow.records import Candidate
from knowledge_flow.strategies.thinkers import score, select, tally
from tests.support.candidates import candidate


def thinker(rid: str, answer: str | None, confidence: float | None = None, **extra: Any) -> Candidate:
    return candidate(rid, answer, None, confidence, **extra)


def ids(kept: list[Candidate]) -> list[str]:
    return [c["rollout_id"] for c in kept]


def test_vote_takes_the_majority_and_breaks_ties_by_confidence() -> None:
    pool = [thinker("a", "5", -2.0), thinker("b", "7", -0.5), thinker("c", "5", -1.0)]
    assert ids(select(pool, 3, 0.0, "integer"))[0] == "b"  # confidence alone: the most confident
    assert ids(select(pool, 3, 0.0, "integer", rule="vote")) == ["c", "b", "a"]  # 5 wins; its best thinker first
    tie = [thinker("a", "5", -2.0), thinker("b", "7", -0.5)]
    assert ids(select(tie, 1, 0.0, "integer", rule="vote")) == ["b"]
    same = [thinker("a", "5", None), thinker("b", "7", None)]
    assert ids(select(same, 1, 0.0, "integer", rule="vote")) == ["a"]  # then the earlier thinker


def test_failed_and_excluded_thinkers_do_not_vote() -> None:
    pool = [
        thinker("a", "5", -1.0),
        thinker("b", "7", -0.1, excluded="gconf_threshold"),
        thinker("c", "7", -0.1, excluded="below_threshold"),
        thinker("d", "7", -0.1, error="boom"),
    ]
    assert tally(pool, "integer") == {"5": 1.0}
    assert ids(select(pool, 4, 0.0, "integer", rule="vote"))[0] == "a"
    assert ids(select(pool, 4, 0.0, "integer"))[-1] == "d"  # failures come last, then kept-out ones before


def test_conf_vote_and_scores_by_deepconf_measures() -> None:
    pool = [
        thinker("a", "5", -3.0, measures={"lowest": 12.0, "tail": 1.0}),
        thinker("b", "7", -0.1, measures={"lowest": 5.0, "tail": 9.0}),
        thinker("c", "7", -0.2, measures={"lowest": 6.0, "tail": 8.0}),
    ]
    assert score(pool[0], "lowest") == 12.0 and score(pool[0]) == -3.0
    assert score(thinker("x", "1", None), "tail") == float("-inf")
    assert tally(pool, "integer", "lowest") == {"5": 12.0, "7": 11.0}
    assert ids(select(pool, 1, 0.0, "integer", rule="conf-vote", score_by="lowest")) == ["a"]
    assert ids(select(pool, 1, 0.0, "integer", rule="conf-vote", score_by="tail")) == ["b"]
    assert ids(select(pool, 1, 0.0, "integer", rule="confidence", score_by="tail")) == ["b"]


def test_verifier_choice_wins_and_falls_back_to_the_vote() -> None:
    pool = [thinker("a", "5", -1.0), thinker("b", "5", -1.0), thinker("c", "7", -3.0)]
    assert ids(select(pool, 3, 0.0, "integer", rule="verifier", chosen="c"))[0] == "c"
    assert ids(select(pool, 3, 0.0, "integer", rule="verifier", chosen=None))[0] == "a"
    assert ids(select(pool, 3, 0.0, "integer", rule="verifier", chosen="zzz"))[0] == "a"
