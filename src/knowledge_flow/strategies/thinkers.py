"""Parallel thinkers (ReasonFlow's idea at the rollout level), combinable with any strategy.

Rules:
- Temperatures: `n` thinkers get temperatures spread evenly over [low, high] (all equal when low == high).
- Confidence (the score, run option `confidence_score`): the mean token log-probability of a thinker's
  output (`mean-logprob`, the default; log-probabilities are requested when there is more than one thinker),
  or one of DeepConf's trace measures (`lowest`, `bottom10`, `tail`, `mean`; see `confidence`). A thinker
  without it scores -inf, below every other.
- Selection (run option `select_rule`): greedily keep `k` thinkers; each pick maximises confidence -
  diversity_weight * similarity to the thinkers already kept, where similarity = 0.5 * [same answer] + 0.5 *
  Jaccard overlap of the summaries' word sets. The first pick is the best thinker: its answer is the
  iteration's answer and its summary the next reference solution. With `confidence` the first pick is the
  most confident thinker. With `vote` it is the most confident thinker giving the majority answer (one vote
  per thinker; a tie goes to the answer with the more confident thinker, then to the earlier thinker); with
  `conf-vote` each thinker's vote weighs its score (a DeepConf measure); with `verifier` or `manager` it is
  the thinker the call chose (a vote when it chose none). Failed thinkers, and thinkers kept out of votes
  (cancelled or below DeepConf's online threshold), never vote; they are picked last. `tie_break` says how a
  tied vote was settled (by confidence, or by the thinkers' order when their scores are equal or missing).
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

from knowledge_flow.records import AnswerType, Candidate
from knowledge_flow.text.answers import normalize

_WORD = re.compile(r"\w+")
#: Select rules whose choice is made by a stored call (the vote decides when the call chose nothing).
CALL_RULES = ("verifier", "manager")


def spread(low: float, high: float, n: int) -> list[float]:
    if n == 1 or high == low:
        return [round(low if n > 1 else (low + high) / 2, 4)] * n
    step = (high - low) / (n - 1)
    return [round(low + i * step, 4) for i in range(n)]


def score(candidate: Candidate, by: str = "mean-logprob") -> float:
    value = candidate["confidence"] if by == "mean-logprob" else (candidate.get("measures") or {}).get(by)
    return float(value) if value is not None else -math.inf


def can_vote(candidate: Candidate, answer_type: AnswerType) -> bool:
    return (
        candidate["error"] is None
        and not candidate.get("excluded")
        and normalize(candidate["answer"], answer_type) is not None
    )


def tally(candidates: Sequence[Candidate], answer_type: AnswerType, weighted_by: str | None = None) -> dict[str, float]:
    """Weight per normalised answer among the thinkers that can vote (one vote each, or their score)."""
    totals: dict[str, float] = {}
    for candidate in candidates:
        if not can_vote(candidate, answer_type):
            continue
        key = normalize(candidate["answer"], answer_type)
        assert key is not None
        weight = 1.0 if weighted_by is None else max(score(candidate, weighted_by), 0.0)
        totals[key] = totals.get(key, 0.0) + weight
    return totals


def vote_winner(
    candidates: Sequence[Candidate], answer_type: AnswerType, score_by: str, weighted: bool
) -> Candidate | None:
    """The most confident thinker giving the winning answer; None when no thinker can vote."""
    totals = tally(candidates, answer_type, score_by if weighted else None)
    if not totals:
        return None
    voters = [c for c in candidates if can_vote(c, answer_type)]

    def best_of(key: str) -> Candidate:
        group = [c for c in voters if normalize(c["answer"], answer_type) == key]
        return max(group, key=lambda c: (score(c, score_by), -voters.index(c)))

    def rank(key: str) -> tuple[float, float, int]:
        best = best_of(key)
        return (totals[key], score(best, score_by), -voters.index(best))

    return best_of(max(totals, key=rank))


def tie_break(candidates: Sequence[Candidate], answer_type: AnswerType, score_by: str, weighted: bool) -> str | None:
    """How `vote_winner` settled a tie for the most votes: ``confidence`` when the tied answers' most confident
    thinkers differ in score, ``thinker order`` when they do not (equal, or no log-probabilities); None when
    no two answers tie."""
    totals = tally(candidates, answer_type, score_by if weighted else None)
    top = max(totals.values(), default=0.0)
    tied = [key for key, weight in totals.items() if weight == top]
    if len(tied) < 2:
        return None
    voters = [c for c in candidates if can_vote(c, answer_type)]
    best = {key: max(score(c, score_by) for c in voters if normalize(c["answer"], answer_type) == key) for key in tied}
    leader = max(best.values())
    return "confidence" if sum(1 for value in best.values() if value == leader) == 1 else "thinker order"


def similarity(a: Candidate, b: Candidate, answer_type: AnswerType) -> float:
    same = a["answer"] is not None and normalize(a["answer"], answer_type) == normalize(b["answer"], answer_type)
    words_a = set(_WORD.findall((a["summary"] or "").lower()))
    words_b = set(_WORD.findall((b["summary"] or "").lower()))
    union = words_a | words_b
    overlap = len(words_a & words_b) / len(union) if union else 0.0
    return 0.5 * float(same) + 0.5 * overlap


def select(
    candidates: Sequence[Candidate],
    k: int,
    diversity_weight: float,
    answer_type: AnswerType,
    *,
    rule: str = "confidence",
    score_by: str = "mean-logprob",
    chosen: str | None = None,
) -> list[Candidate]:
    """The kept thinkers, best first (a single candidate is always kept). `chosen` is the rollout id the
    verifier or manager picked (rules `verifier`, `manager`)."""
    pool = list(candidates)
    kept: list[Candidate] = []
    first: Candidate | None = None
    if rule in CALL_RULES and chosen is not None:
        first = next((c for c in pool if c["rollout_id"] == chosen and c["error"] is None), None)
    if first is None and rule in ("vote", "conf-vote", *CALL_RULES):
        first = vote_winner(pool, answer_type, score_by, weighted=rule == "conf-vote")
    if first is not None:
        kept.append(first)
        pool.remove(first)
    while pool and len(kept) < k:

        def adjusted(candidate: Candidate) -> float:
            penalty = max((similarity(candidate, other, answer_type) for other in kept), default=0.0)
            base = score(candidate, score_by)
            return base - diversity_weight * penalty if math.isfinite(base) else -math.inf

        best = max(
            pool,
            key=lambda c: (
                c["error"] is None,
                not c.get("excluded"),
                adjusted(c),
                c["answer"] is not None,
                -pool.index(c),
            ),
        )
        kept.append(best)
        pool.remove(best)
    return kept


def agreement(candidates: Sequence[Candidate], answer_type: AnswerType) -> float:
    keys = [normalize(c["answer"], answer_type) for c in candidates]
    counted = [key for key in keys if key is not None]
    if not candidates or not counted:
        return 0.0
    return max(counted.count(key) for key in set(counted)) / len(candidates)


def next_range(
    current: Sequence[float],
    candidates: Sequence[Candidate],
    threshold: float | None,
    answer_type: AnswerType,
    score_by: str = "mean-logprob",
) -> list[float]:
    low, high = current
    centre, half = (low + high) / 2, max((high - low) / 2, 0.05)
    agree = agreement(candidates, answer_type)
    best = max((score(c, score_by) for c in candidates), default=-math.inf)
    confident = threshold is None or best >= threshold
    if agree < 0.5:
        half *= 1.5
    elif agree > 0.8 and confident:
        half *= 0.75
    return [round(max(0.0, centre - half), 4), round(min(2.0, centre + half), 4)]
