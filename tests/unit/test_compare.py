"""The statistics of `kflow report --compare` and the accuracy benchmark (evaluation/compare.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from knowledge_flow.evaluation.compare import (
    ProblemRecord,
    RunRecords,
    compare_items,
    compare_runs,
    first_rollout,
    flips,
    mcnemar_exact,
    records_from_items,
    wilson,
)


def test_wilson_interval_known_values() -> None:
    low, high = wilson(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    low, high = wilson(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson(22, 30)
    assert low == pytest.approx(0.5555, abs=1e-4) and high == pytest.approx(0.8582, abs=1e-4)
    assert wilson(10, 10)[1] == 1.0
    assert wilson(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson(11, 10)


def test_exact_mcnemar_is_the_two_sided_binomial_test_of_discordant_pairs() -> None:
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 0) == pytest.approx(0.0625)  # 2 * (1/2)^5
    assert mcnemar_exact(0, 5) == pytest.approx(0.0625)
    assert mcnemar_exact(10, 2) == pytest.approx(0.03857, abs=1e-5)
    assert mcnemar_exact(3, 3) == 1.0
    assert mcnemar_exact(18, 5) == pytest.approx(0.01062, abs=1e-5)


def test_flips_count_consecutive_changes() -> None:
    assert flips([True, False, False, True, False]) == (2, 1)
    assert flips([]) == (0, 0)
    assert flips([False]) == (0, 0)


def record(pid: str, correct: list[bool], final: bool, tokens: int = 10) -> ProblemRecord:
    return ProblemRecord(pid, correct, final, [tokens] * len(correct), [2 * tokens] * len(correct))


def test_paired_comparison_on_common_problems() -> None:
    base = RunRecords("sc", [record("a", [True], True), record("b", [False], False), record("c", [True], True)])
    other = RunRecords(
        "kf",
        [
            record("a", [True, False], False),  # a loss
            record("b", [False, True], True),  # a win
            record("c", [True, True], True),
            record("z", [True], True),  # not in the baseline: not paired
        ],
    )
    sc, kf = compare_runs([base, other])
    assert sc.paired is None and sc.accuracy == pytest.approx(2 / 3)
    assert kf.problems == 4 and kf.correct == 3
    assert kf.paired is not None
    assert (kf.paired.common, kf.paired.wins, kf.paired.losses) == (3, 1, 1)
    assert (kf.paired.both_right, kf.paired.both_wrong) == (1, 0)
    assert kf.paired.p_value == 1.0 and kf.paired.difference == 0.0
    assert (kf.right_to_wrong, kf.wrong_to_right) == (1, 1)
    assert kf.pass_at_1 == [0.75, 0.5]
    assert kf.prompt_tokens_per_problem == pytest.approx((20 + 20 + 20 + 10) / 4)
    assert kf.tokens_per_problem == pytest.approx(3 * 70 / 4)
    # a baseline named by label
    by_label = compare_runs([other, base], baseline="sc")
    assert by_label[0].paired is not None and by_label[0].paired.baseline == "sc"
    with pytest.raises(ValueError):
        compare_runs([base], baseline="missing")


@dataclass
class Item:
    problem_id: str
    gold: str
    answers: list[str | None]
    final_answer: str | None
    status: str = "done"
    correct: list[bool] = field(default_factory=list)
    final_correct: bool | None = None
    prompt_tokens: list[int] = field(default_factory=list)
    completion_tokens: list[int] = field(default_factory=list)
    run_id: str | None = None

    def __post_init__(self) -> None:
        self.correct = [a == self.gold for a in self.answers]
        self.final_correct = self.final_answer == self.gold
        self.prompt_tokens = [100] * len(self.answers)
        self.completion_tokens = [50] * len(self.answers)


def test_records_regrade_the_final_answer_from_stored_answers() -> None:
    items = [
        Item("0", "18", ["18", "20", "18", "20"], final_answer="20"),  # last: wrong; majority (tie, latest): 20
        Item("1", "3", ["3", "3", "5", "4"], final_answer="4"),  # last wrong; majority right
        Item("2", "7", ["7", None, "7", "7"], final_answer="7"),
        Item("3", "1", [], final_answer=None, status="failed"),  # unfinished: left out
    ]
    own = records_from_items("kf last", items)
    assert [p.final_correct for p in own.problems] == [False, False, True]
    majority = records_from_items("kf majority", items, final_rule="majority:all")
    assert [p.final_answer for p in majority.problems] == ["20", "3", "7"]
    assert [p.final_correct for p in majority.problems] == [False, True, True]
    last = records_from_items("kf last", items, final_rule="last")
    assert [p.final_correct for p in last.problems] == [False, False, True]
    one = first_rollout("one rollout", majority)
    assert [p.final_correct for p in one.problems] == [True, True, True]
    assert one.problems[0].prompt_tokens == [100] and one.problems[0].tokens == 150


def test_compare_items_takes_stored_items_of_several_runs() -> None:
    sc = [Item("0", "18", ["18", "18", "20", "18"], final_answer="18"), Item("1", "3", ["4", "4", "3", "4"], "4")]
    kf = [Item("0", "18", ["18", "20", "20", "20"], final_answer="20"), Item("1", "3", ["4", "3", "3", "3"], "3")]
    base, last, majority = compare_items(
        [("sc", sc), ("kf", kf), ("kf", kf)], final_rules=[None, "last", "majority:all"]
    )
    assert base.accuracy == 0.5 and base.paired is None
    assert last.paired is not None and (last.paired.wins, last.paired.losses) == (1, 1)
    assert majority.paired is not None and majority.correct == 1
    assert (last.right_to_wrong, last.wrong_to_right) == (1, 1)
    assert base.to_json()["problems"] == 2 and base.to_json()["paired"] is None
    with pytest.raises(ValueError):
        compare_items([("sc", sc)], final_rules=[None, None])


def test_a_rule_over_every_trace_votes_over_the_runs_traces() -> None:
    """conf-vote and majority-traces vote over each run's traces, never over the iterations' answers."""
    from knowledge_flow.records import TraceVote
    from knowledge_flow.strategies.policies import MissingTraces

    def vote(answer: str, lowest: float) -> TraceVote:
        found = {"lowest": lowest, "tail": lowest, "bottom10": lowest, "mean": lowest}
        return TraceVote(rollout_id="r", iteration=0, answer=answer, measures=found, counted=True)

    items = [Item("0", "5", ["7", "7"], final_answer="5", run_id="a")]  # the waves' winners say 7
    votes = {"a": [vote("5", 20.0), vote("7", 3.0), vote("7", 3.0)]}
    weighted = records_from_items("dc", items, final_rule="conf-vote:lowest", votes=votes)
    assert [(p.final_answer, p.final_correct) for p in weighted.problems] == [("5", True)]
    plain = records_from_items("dc", items, final_rule="majority-traces", votes=votes)
    assert [(p.final_answer, p.final_correct) for p in plain.problems] == [("7", False)]
    with pytest.raises(MissingTraces):
        records_from_items("dc", items, final_rule="conf-vote:lowest")
