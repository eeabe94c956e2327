"""DeepConf measures on known log-probabilities, and on log-probabilities recorded from the real vLLM server
compared with the reference implementation's formulas (re-implemented here from their description)."""

from __future__ import annotations

import json
import math
import random
import struct
import zlib
from pathlib import Path
from typing import Any

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
    # with k, the k most likely of the candidates returned (k + 1 are requested), whatever their order
    assert token_confidence([-7.0, -1.0, -2.0], 2) == pytest.approx(1.5)
    assert token_confidence([-9999.0, -1.0, -3.0], 2) == pytest.approx(2.0)  # sentinels never count
    assert token_confidence([-1.0], 2) == pytest.approx(1.0)  # fewer than k: what there is
    assert token_confidences([[-5.0, -1.0, -3.0], [-2.0, -2.0, -8.0]], 2) == [2.0, 2.0]
    monitor = WindowMonitor(threshold=3.0, window=1, k=2)
    assert monitor.push([-9.0, -1.0, -3.0]) and monitor.confidences == [2.0]  # (1 + 3) / 2 < 3, not 13 / 3


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


def test_packed_confidences_keep_float32_precision_and_old_rows_read() -> None:
    values = [0.123456, 5.5, 17.251234, 1000.0, 1e6, 12.3456789]
    unpacked = unpack_confidences(pack_confidences(values))
    assert len(unpacked) == len(values)
    # float32: far finer than the reference's rounding to 3 decimals (float16 was 0.008 apart at 12)
    assert all(abs(a - b) <= 1e-6 * max(1.0, b) for a, b in zip(unpacked, values, strict=True))
    assert round(unpacked[5], 3) == round(values[5], 3) == 12.346
    # rows written before as float16 read back as they were
    old = zlib.compress(struct.pack("<3e", 0.5, 12.3456789, 65504.0), 6)
    assert unpack_confidences(old) == [0.5, 12.34375, 65504.0]


RECORDED = json.loads((Path(__file__).resolve().parents[1] / "data" / "vllm_logprobs.json").read_text())


def reference_compute_confidence(logprobs: dict[int, float]) -> float:
    """The reference's offline token confidence: minus the mean of every log-probability vLLM returned for
    the position (for ``logprobs=20``: the top 20, plus the sampled token when it is outside them), rounded
    to 3 decimals."""
    return round(-sum(logprobs.values()) / len(logprobs), 3)


def reference_online_confidence(logprobs: list[float], k: int) -> float:
    """The reference's online token confidence (its logits processor): minus the sum of the log-probabilities
    of the k most likely tokens, over k."""
    return -sum(sorted(logprobs, reverse=True)[:k]) / k


def reference_least_grouped(confs: list[float], group_size: int) -> list[float]:
    """The reference's sliding-window means, rounded to 3 decimals (one mean when the trace is shorter)."""
    if len(confs) < group_size:
        return [sum(confs) / len(confs)] if confs else [0]
    return [round(sum(confs[i : i + group_size]) / group_size, 3) for i in range(len(confs) - group_size + 1)]


def offline_logprobs(position: dict[str, Any], k: int) -> dict[int, float]:
    """What vLLM's offline generate returns for ``logprobs=k`` at a recorded position: the top k, plus the
    sampled token."""
    top = {int(token): value for token, value in position["top"].items()}
    best = dict(sorted(top.items(), key=lambda item: -item[1])[:k])
    return best | {position["sampled"]: position["logprob"]}


def test_token_confidence_equals_the_reference_on_recorded_vllm_log_probabilities() -> None:
    """Completions path, k = 20, 21 requested with ``return_tokens_as_token_ids``: the mean of the 20 largest is
    the reference's online formula everywhere, and its offline `compute_confidence` wherever the sampled token
    is among the top 20 (elsewhere the offline formula also averages the sampled token)."""
    k = 20
    positions = RECORDED["completions"]["positions"]
    inside = outside = 0
    ours_all = []
    for position in positions:
        values = list(position["top"].values())
        assert len(values) >= k + 1 and len(set(position["top"])) == len(values)  # token ids: nothing merged
        ours = token_confidence(values, k)
        assert ours is not None
        ours_all.append(ours)
        assert ours == pytest.approx(reference_online_confidence(values, k), abs=1e-12)
        offline = offline_logprobs(position, k)
        if len(offline) == k:  # the sampled token is among the top k
            inside += 1
            assert abs(ours - reference_compute_confidence(offline)) <= 0.0005 + 1e-9
        else:
            outside += 1
            assert len(offline) == k + 1 and round(ours, 3) != reference_compute_confidence(offline)
    assert inside >= 5 and outside >= 5  # the recording covers both cases
    # keyed by text, vLLM merges candidates that decode alike: fewer than the 21 asked for at some positions
    assert any(p["entries_keyed_by_text"] < len(p["top"]) for p in positions)
    # the trace measures over the recorded trace equal the reference's sliding windows (to its rounding)
    window = 8
    rounded = [reference_compute_confidence(offline_logprobs(p, k)) for p in positions]
    exact = [reference_online_confidence(list(p["top"].values()), k) for p in positions]
    found = measures(ours_all, window)
    assert found is not None
    assert found.lowest == pytest.approx(min(reference_least_grouped(exact, window)), abs=0.0005)
    assert abs(found.lowest - min(reference_least_grouped(rounded, window))) > 0.0005  # the sampled-token term


def test_chat_path_needs_one_more_log_probability() -> None:
    """Chat path: asked for 20, vLLM returns the sampled token first and the top 19 when the sampled token is
    outside the top 20; asked for 21 (what the client sends for k = 20), the 20 largest are the exact top 20."""
    k = 20
    defect = 0
    for position in RECORDED["chat"]["positions"]:
        asked_k, asked_more = position["top_20"], position["top_21"]
        assert len(asked_k) == k and len(asked_more) == k + 1
        exact = sorted(asked_more, reverse=True)[:k]
        assert token_confidence(asked_more, k) == pytest.approx(-sum(exact) / k, abs=1e-12)
        sampled_outside = position["logprob"] < exact[-1]
        if sampled_outside:
            assert asked_k[0] == position["logprob"] and asked_more[0] == position["logprob"]
            assert sorted(asked_k, reverse=True)[:19] == exact[:19]  # the sampled token took the 20th's place
            assert token_confidence(asked_k, k) != pytest.approx(token_confidence(asked_more, k), abs=1e-6)
            defect += 1
        else:
            assert sorted(asked_k, reverse=True) == exact
    assert defect >= 3
