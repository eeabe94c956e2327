"""Parallel thinkers (ReasonFlow's idea at the rollout level), combinable with any strategy.

Rules:
- Temperatures: `n` thinkers get temperatures spread evenly over [low, high] (all equal when low == high).
- Confidence: the mean token log-probability of a thinker's output (log-probabilities are requested when
  there is more than one thinker). A thinker without log-probabilities scores -inf, below every other.
- Selection: greedily keep `k` thinkers; each pick maximises confidence - diversity_weight * similarity to
  the thinkers already kept, where similarity = 0.5 * [same answer] + 0.5 * Jaccard overlap of the summaries'
  word sets. The first pick (the most confident) is the best thinker: its answer is the iteration's answer
  and its summary the next reference solution.
- Uncertainty: when the best confidence is below `uncertainty_threshold`, the iteration does not replace
  the reference solution (its answer is still recorded); an iteration with no reference yet always sets it.
- Dynamic temperature: after each iteration, agreement = share of thinkers giving the majority answer. Below
  0.5 the spread widens by half (explore), above 0.8 with a confident best thinker it narrows by a quarter
  (exploit); the centre stays, and the range is clamped to [0, 2].
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from knowledge_flow.answers import normalize
from knowledge_flow.records import AnswerType, CurrentRollout

_WORD = re.compile(r"\w+")


def spread(low: float, high: float, n: int) -> list[float]:
    if n == 1 or high == low:
        return [round(low if n > 1 else (low + high) / 2, 4)] * n
    step = (high - low) / (n - 1)
    return [round(low + i * step, 4) for i in range(n)]


def score(candidate: CurrentRollout) -> float:
    return candidate["confidence"] if candidate["confidence"] is not None else -math.inf


def similarity(a: CurrentRollout, b: CurrentRollout, answer_type: AnswerType) -> float:
    same = a["answer"] is not None and normalize(a["answer"], answer_type) == normalize(b["answer"], answer_type)
    words_a = set(_WORD.findall((a["summary"] or "").lower()))
    words_b = set(_WORD.findall((b["summary"] or "").lower()))
    union = words_a | words_b
    overlap = len(words_a & words_b) / len(union) if union else 0.0
    return 0.5 * float(same) + 0.5 * overlap


def select(
    candidates: Sequence[CurrentRollout], k: int, diversity_weight: float, answer_type: AnswerType
) -> list[CurrentRollout]:
    """The kept thinkers, best first (a single candidate is always kept)."""
    pool = list(candidates)
    kept: list[CurrentRollout] = []
    while pool and len(kept) < k:

        def adjusted(candidate: CurrentRollout) -> float:
            penalty = max((similarity(candidate, other, answer_type) for other in kept), default=0.0)
            base = score(candidate)
            return base - diversity_weight * penalty if math.isfinite(base) else -math.inf

        best = max(pool, key=lambda c: (c["error"] is None, adjusted(c), c["answer"] is not None, -pool.index(c)))
        kept.append(best)
        pool.remove(best)
    return kept


def agreement(candidates: Sequence[CurrentRollout], answer_type: AnswerType) -> float:
    keys = [normalize(c["answer"], answer_type) for c in candidates]
    counted = [key for key in keys if key is not None]
    if not candidates or not counted:
        return 0.0
    return max(counted.count(key) for key in set(counted)) / len(candidates)


def next_range(
    current: Sequence[float], candidates: Sequence[CurrentRollout], threshold: float | None, answer_type: AnswerType
) -> list[float]:
    low, high = current
    centre, half = (low + high) / 2, max((high - low) / 2, 0.05)
    agree = agreement(candidates, answer_type)
    best = max((score(c) for c in candidates), default=-math.inf)
    confident = threshold is None or best >= threshold
    if agree < 0.5:
        half *= 1.5
    elif agree > 0.8 and confident:
        half *= 0.75
    return [round(max(0.0, centre - half), 4), round(min(2.0, centre + half), 4)]
