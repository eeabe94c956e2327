"""The per-trace estimators (`evaluation.traces`) and the common token axis (`evaluation.budgets`)."""

from __future__ import annotations

import pytest

from knowledge_flow.evaluation.budgets import TokenCurve, accuracy_at, common_budgets, equal_tokens
from knowledge_flow.evaluation.traces import Trace, ks_for, maj_at, plurality_credit, trace_figures


def t(key: str | None, right: bool, iteration: int = 0) -> Trace:
    return Trace(iteration, key, right)


def test_ks_are_powers_of_two_and_the_count() -> None:
    assert ks_for(1) == [1] and ks_for(4) == [1, 2, 4] and ks_for(6) == [1, 2, 4, 6] and ks_for(0) == []


def test_plurality_credit_splits_ties_and_ignores_unanswered() -> None:
    assert plurality_credit([t("9", True), t("5", False)]) == 0.5
    assert plurality_credit([t("9", True), t("9", True), t("5", False)]) == 1.0
    assert plurality_credit([t(None, False), t("5", False)]) == 0.0
    assert plurality_credit([t(None, False)]) == 0.0


def test_maj_at_k_is_the_expectation_over_subsets() -> None:
    traces = [t("9", True), t("9", True), t("5", False), t(None, False)]
    # pairs: {9,9} 1; {9,5} x2 a tie, 1/2 each; {9,none} x2 1 each; {5,none} 0 -> 4/6
    assert maj_at(traces, 2, "s") == pytest.approx(4 / 6)
    assert maj_at(traces, 1, "s") == pytest.approx(0.5)  # maj@1 is pass@1
    assert maj_at(traces, 4, "s") == 1.0
    with pytest.raises(ValueError):
        maj_at(traces, 5, "s")


def test_maj_at_k_above_the_exact_limit_is_a_seeded_average() -> None:
    traces = [t("9", True)] * 12 + [t("5", False)] * 12  # C(24, 6) subsets: drawn
    first, again, other = maj_at(traces, 6, "a"), maj_at(traces, 6, "a"), maj_at(traces, 6, "b")
    assert first == again and 0.3 < first < 0.7 and first != other


def test_trace_figures_per_problem_and_per_iteration() -> None:
    figures = trace_figures(
        {"a": [t("1", True, 0), t("2", False, 0), t("1", True, 1), t("1", True, 1)], "b": [t("3", False, 0)], "c": []}
    )
    assert figures is not None
    assert (figures.problems, figures.traces, figures.fewest_traces, figures.most_traces) == (2, 5, 1, 4)
    assert figures.pass_at_1 == pytest.approx((0.75 + 0.0) / 2)
    assert list(figures.maj_at_k) == [1]
    assert figures.per_iteration == pytest.approx([(0.5 + 0.0) / 2, 1.0])
    assert trace_figures({"a": []}) is None


def test_budgets_where_every_run_has_data() -> None:
    a = TokenCurve("a", [(100, 0.2), (200, 0.4), (300, 0.5)])
    b = TokenCurve("b", [(150, 0.3), (450, 0.6)])
    assert common_budgets([a, b]) == [150, 200, 300]
    assert accuracy_at(a, 250) == 0.4 and accuracy_at(b, 100) is None
    assert equal_tokens([a, b]).accuracy == {"a": [0.2, 0.4, 0.5], "b": [0.3, 0.3, 0.3]}
    assert common_budgets([a, TokenCurve("c", [(400, 0.1)])]) == []  # ranges do not overlap
    many = TokenCurve("m", [(float(x), 0.0) for x in range(100, 400, 10)])
    assert len(common_budgets([a, many], limit=4)) == 4
