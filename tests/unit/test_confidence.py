"""DeepConf measures on known log-probabilities."""

from __future__ import annotations

import math
import random

import pytest

from knowledge_flow.persistence.compression import pack_confidences, unpack_confidences
from knowledge_flow.strategies.confidence import (
    WindowMonitor,
    group_confidences,
    keep_top,
    measures,
    percentile,
    share_of_leader,
    token_confidence,
    token_confidences,
    warmup_threshold,
    weighted_vote,
)


def test_token_confidence_is_minus_the_mean_of_the_top_candidates() -> None:
    assert token_confidence([-0.5, -1.5]) == pytest.approx(1.0)
    assert token_confidence([-0.01, -4.0, -6.0, -8.0]) == pytest.approx((0.01 + 4 + 6 + 8) / 4)
    # sentinels for -inf (vLLM writes -9999.0) and non-finite values are left out of the mean
    assert token_confidence([-2.0, -9999.0, -math.inf, math.nan]) == pytest.approx(2.0)
    assert token_confidence([]) is None and token_confidence([-9999.0]) is None
    # positions without candidates are skipped
    assert token_confidences([[-1.0, -3.0], [], [-4.0]]) == [2.0, 4.0]


def test_groups_and_trace_measures() -> None:
    confs = [float(v) for v in range(1, 11)]  # 1..10
    assert group_confidences(confs, 3) == pytest.approx([2, 3, 4, 5, 6, 7, 8, 9])
    assert group_confidences(confs, 20) == pytest.approx([5.5])  # shorter than the window: one group
    assert group_confidences([], 3) == []
    found = measures(confs, 3)
    assert found is not None
    assert (found.tokens, found.mean, found.lowest, found.tail) == (10, pytest.approx(5.5), pytest.approx(2), 9)
    assert found.bottom10 == pytest.approx(2)  # int(8 * 0.1) = 0 -> at least one group
    # 31 windows of 1: the lowest 3 (10%) are averaged
    many = [5.0] * 28 + [1.0, 2.0, 3.0]
    spread = measures(many, 1)
    assert spread is not None and spread.bottom10 == pytest.approx(2.0) and spread.lowest == 1.0
    assert spread.tail == 3.0
    assert measures([], 4) is None


def test_measures_match_a_direct_computation() -> None:
    rng = random.Random(7)
    confs = [rng.uniform(0.5, 15.0) for _ in range(500)]
    window = 37
    means = [sum(confs[i : i + window]) / window for i in range(len(confs) - window + 1)]
    found = measures(confs, window)
    assert found is not None
    assert found.lowest == pytest.approx(min(means))
    bottom = sorted(means)[: int(len(means) * 0.1)]
    assert found.bottom10 == pytest.approx(sum(bottom) / len(bottom))
    assert found.tail == pytest.approx(sum(confs[-window:]) / window)
    assert found.mean == pytest.approx(sum(confs) / len(confs))


def test_window_monitor_stops_only_on_a_full_window_below_the_threshold() -> None:
    monitor = WindowMonitor(threshold=2.0, window=3)
    # confidences 3, 1, 1 -> the first full window's mean is 5/3 < 2: stop at the third token
    assert [monitor.push([-3.0]), monitor.push([-1.0]), monitor.push([-1.0])] == [False, False, True]
    assert monitor.stopped_at == 3 and monitor.confidences == [3.0, 1.0, 1.0]
    short = WindowMonitor(threshold=2.0, window=5)
    assert not any(short.push([-1.0]) for _ in range(4))  # never stopped before the window is full
    slides = WindowMonitor(threshold=2.0, window=2)
    results = [slides.push([-v]) for v in (4.0, 3.0, 2.5, 1.0)]  # windows: 3.5, 2.75, 1.75
    assert results == [False, False, False, True] and slides.stopped_at == 4
    never = WindowMonitor(threshold=None, window=1)
    assert not any(never.push([-0.1]) for _ in range(10)) and len(never.confidences) == 10
    assert not WindowMonitor(threshold=9.0, window=1).push([])  # a position without candidates is skipped


def test_percentile_threshold_and_top_eta() -> None:
    numpy = pytest.importorskip("numpy")
    rng = random.Random(3)
    for size in (1, 2, 5, 16, 33):
        values = [rng.uniform(0, 20) for _ in range(size)]
        for q in (0, 10, 37.5, 90, 100):
            assert percentile(values, q) == pytest.approx(float(numpy.percentile(values, q)))
    lowest = [10.0, 12.0, 14.0, 16.0, 18.0]
    assert warmup_threshold(lowest, 90) == pytest.approx(numpy.percentile(lowest, 10))  # DeepConf-high
    assert warmup_threshold(lowest, 10) == pytest.approx(numpy.percentile(lowest, 90))  # DeepConf-low
    assert warmup_threshold([], 90) is None
    assert keep_top([1.0, 5.0, 3.0, 5.0], 50) == [False, True, False, True]  # ties at the cut are kept
    assert keep_top([2.0, 2.0], 10) == [True, True]
    assert keep_top([], 10) == []


def test_weighted_vote_and_consensus_share() -> None:
    totals = weighted_vote([("5", 10.0), ("7", 2.0), ("7", 3.0)])
    assert totals == {"5": 10.0, "7": 5.0}
    assert share_of_leader(totals) == pytest.approx(10 / 15)
    assert share_of_leader({}) == 0.0


def test_packed_confidences_keep_three_digits() -> None:
    values = [0.123, 5.5, 17.25, 1000.0, 1e6]
    unpacked = unpack_confidences(pack_confidences(values))
    assert len(unpacked) == len(values)
    assert all(abs(a - b) <= 1e-3 * max(1.0, b) for a, b in zip(unpacked[:4], values[:4], strict=True))
    assert unpacked[4] == 65504.0  # capped at float16's largest value
