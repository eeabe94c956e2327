"""Final-answer rule conf-vote and stop policy consensus."""

from __future__ import annotations

import pytest

from knowledge_flow.state import TraceVote
from knowledge_flow.strategies.policies import (
    ConfVote,
    Consensus,
    MissingTraces,
    TraceMajority,
    final_answer,
    parse_final_answer_rule,
    parse_stop_policy,
    should_stop,
    uses_traces,
)


def trace(answer: str | None, lowest: float | None, counted: bool = True, tail: float = 1.0) -> TraceVote:
    found = None if lowest is None else {"lowest": lowest, "tail": tail, "bottom10": lowest, "mean": lowest}
    return TraceVote(rollout_id="r", iteration=0, answer=answer, measures=found, counted=counted)


def test_parsing() -> None:
    assert parse_final_answer_rule("conf-vote:lowest") == ConfVote("lowest", None)
    assert parse_final_answer_rule("conf-vote:bottom10:10") == ConfVote("bottom10", 10.0)
    assert parse_final_answer_rule("conf-vote:tail:90") == ConfVote("tail", 90.0)
    assert parse_stop_policy("consensus:0.95") == Consensus(0.95, 2)
    assert parse_stop_policy("consensus:1:8") == Consensus(1.0, 8)
    for bad in ("conf-vote", "conf-vote:best", "conf-vote:tail:0", "conf-vote:tail:101", "conf-vote:tail:x"):
        with pytest.raises(ValueError, match="final answer rule"):
            parse_final_answer_rule(bad)
    for bad in ("consensus", "consensus:0", "consensus:1.5", "consensus:0.9:0", "consensus:x"):
        with pytest.raises(ValueError, match="stop policy"):
            parse_stop_policy(bad)
    assert uses_traces("consensus:0.9", "last") and uses_traces("fixed", "conf-vote:tail")
    assert not uses_traces("stable:2", "majority:all")


def test_conf_vote_weighs_by_the_measure_and_filters_the_top_eta() -> None:
    traces = [trace("5", 10.0), trace("7", 3.0), trace("7", 3.5), trace("7", 2.0), trace("9", 50.0, counted=False)]
    assert final_answer("conf-vote:lowest", ["7"], "integer", traces) == "5"  # 10 > 8.5; 9 does not count
    assert final_answer("majority:all", ["5", "7", "7", "7"], "integer") == "7"
    # the top 50% by lowest confidence: 10 and 3.5 (cut at 3.25) -> 10 against 3.5
    assert final_answer("conf-vote:lowest:50", [], "integer", traces[:4]) == "5"
    # by tail (all 1.0): a plain majority
    assert final_answer("conf-vote:tail", [], "integer", traces) == "7"
    # traces without measures: one vote each
    assert (
        final_answer("conf-vote:lowest", [], "integer", [trace("5", None), trace("6", None), trace("6", None)]) == "6"
    )
    # no trace record: refused, never a vote over something else (the iterations' answers)
    for rule in ("conf-vote:lowest", "majority-traces"):
        with pytest.raises(MissingTraces, match="needs the run's traces"):
            final_answer(rule, ["4", "4", "2"], "integer", None)
    assert final_answer("conf-vote:lowest", [], "integer", [trace(None, 5.0)]) is None


def test_majority_over_traces_is_the_references_final_answer() -> None:
    """One vote per counted trace, whatever its confidence; ties go to the answer voted first (the reference's
    ``Counter.most_common``)."""
    assert parse_final_answer_rule("majority-traces") == TraceMajority()
    traces = [trace("5", 10.0), trace("7", 3.0), trace("7", 3.5), trace("9", 50.0, counted=False)]
    assert final_answer("majority-traces", ["5"], "integer", traces) == "7"  # 2 votes to 1; weights ignored
    assert final_answer("conf-vote:lowest", ["5"], "integer", traces) == "5"
    tie = [trace("7", 1.0), trace("5", 1.0), trace("5", 1.0), trace("7", 1.0)]
    assert final_answer("majority-traces", [], "integer", tie) == "7"  # 7 was voted first
    assert final_answer("majority-traces", [], "integer", tie[1:] + tie[:1]) == "5"
    assert final_answer("majority-traces", [], "integer", [trace(None, 1.0)]) is None
    assert uses_traces("fixed", "majority-traces")


def test_consensus_stops_once_the_weighted_vote_is_decided() -> None:
    def stop(traces: list[TraceVote], rule: str = "conf-vote:lowest", policy: str = "consensus:0.9") -> bool:
        return should_stop(policy, 100, ["x"], [False], "integer", traces, rule)

    assert not stop([trace("5", 10.0)])  # fewer than 2 counted traces
    assert stop([trace("5", 10.0), trace("5", 3.0)])
    assert stop([trace("5", 10.0), trace("5", 9.0), trace("7", 1.0)])  # 19 / 20 = 0.95
    assert not stop([trace("5", 10.0), trace("5", 9.0), trace("7", 3.0)])  # 19 / 22
    assert stop([trace("5", 10.0), trace("5", 9.0), trace("7", 30.0, counted=False)])
    assert not stop([trace("5", 1.0), trace("5", 1.0), trace("7", 9.0)], rule="last")  # unweighted: 2/3
    assert stop([trace("5", 1.0), trace("5", 1.0), trace("7", 9.0)], rule="last", policy="consensus:0.6")
    assert not stop([trace("5", 1.0)] * 3, policy="consensus:0.9:4")
    assert should_stop("consensus:0.9", 2, ["1", "2"], [False, False], "integer", [], "last")  # the budget
