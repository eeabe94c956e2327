"""DeepConf confidence measures (Fu et al., "Deep Think with Confidence", arXiv 2508.15260), computed from the
log-probabilities an OpenAI-compatible server returns.

- Token confidence: ``C_i = -mean_j logprob_j`` over the k most likely tokens at position i (``top_logprobs``
  k, 20 in the paper). Not the sampled token's log-probability. A peaked distribution gives a high C_i. The
  request asks for k + 1 candidates and the k largest are averaged: vLLM's chat path returns the sampled token
  first and fills up to the count asked for, so with k it returns the sampled token plus the top k - 1 when
  the sampled one is outside the top k; with k + 1 the exact top k is always there (the completions path
  returns the top k + 1 plus the sampled token, keyed by token id with ``return_tokens_as_token_ids``, since
  candidates with the same text would merge). This is the reference implementation's online formula (its
  logits processor averages the exact top k); its offline `compute_confidence` averages what vLLM returns
  for ``logprobs=20``, the top 20 plus the sampled token when that one is outside them, and rounds C_i to 3
  decimals. Positions without candidates are skipped; values at or below `LOGPROB_FLOOR` (vLLM writes -inf as
  -9999.0) and non-finite values are left out, so one sentinel does not swamp the mean.
- Group confidence: the mean of C_i over a sliding window of `window` tokens (stride 1; 2048 in the paper). A
  trace shorter than the window has one group: the mean of all its tokens.
- Trace measures (higher is more confident): ``lowest`` (the smallest group confidence), ``bottom10`` (the
  mean of the lowest 10% of group confidences, at least one), ``tail`` (the mean of the last `window`
  tokens), ``mean`` (the mean of all tokens).
- Online filtering (`WindowMonitor`): once `window` tokens are in, a trace whose current group confidence
  falls below the threshold is stopped by the client. The threshold is the ``100 - keep`` percentile of the
  warm-up traces' ``lowest`` measures (`warmup_threshold`; keep = 90 is DeepConf-high, 10 DeepConf-low).
- Voting (`weighted_vote`): each trace adds its weight to its answer; optionally only the top ``eta`` percent
  most confident traces vote (`keep_top`, ties at the cut kept, as the reference implementation does).

Values are not rounded (the reference implementation's offline code rounds C_i and group means to 3 decimals;
its online stop does not); they are stored as float32 (`persistence.compression.pack_confidences`).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal, TypeVar, get_args

from knowledge_flow.options import DEFAULT_WINDOW

Measure = Literal["lowest", "bottom10", "tail", "mean"]
MEASURES: tuple[Measure, ...] = get_args(Measure)
#: Log-probabilities at or below this are sentinels for -inf, not values.
LOGPROB_FLOOR = -1000.0
BOTTOM_SHARE = 0.1

K = TypeVar("K", bound=Hashable)


def token_confidence(top_logprobs: Iterable[float], k: int | None = None) -> float | None:
    """``-mean`` of the `k` largest of a position's candidate log-probabilities (all of them when `k` is None
    or there are fewer); None when it has none that count."""
    values = [value for value in top_logprobs if math.isfinite(value) and value > LOGPROB_FLOOR]
    if k is not None and len(values) > k:
        values = heapq.nlargest(k, values)
    return -math.fsum(values) / len(values) if values else None


def token_confidences(positions: Iterable[Iterable[float]], k: int | None = None) -> list[float]:
    """Per position with candidates, its token confidence."""
    values = (token_confidence(top, k) for top in positions)
    return [value for value in values if value is not None]


def below_threshold(found: Mapping[str, float] | None, threshold: float | None) -> bool:
    """Whether a trace's lowest group confidence is below the online threshold (it then does not vote)."""
    lowest = (found or {}).get("lowest")
    return threshold is not None and lowest is not None and lowest < threshold


def group_confidences(confidences: Sequence[float], window: int) -> list[float]:
    """Means of every window of `window` consecutive tokens (one group of all tokens when fewer)."""
    if not confidences:
        return []
    if len(confidences) <= window:
        return [math.fsum(confidences) / len(confidences)]
    sums = [0.0]
    for value in confidences:
        sums.append(sums[-1] + value)
    return [(sums[i + window] - sums[i]) / window for i in range(len(confidences) - window + 1)]


@dataclass(frozen=True)
class Measures:
    tokens: int
    """Positions that had candidates."""
    mean: float
    lowest: float
    bottom10: float
    tail: float

    def as_dict(self) -> dict[str, float]:
        return {name: float(value) for name, value in asdict(self).items()}


def measures(confidences: Sequence[float], window: int = DEFAULT_WINDOW) -> Measures | None:
    """The trace measures of a trace's token confidences; None for a trace without any."""
    groups = group_confidences(confidences, window)
    if not groups:
        return None
    bottom = heapq.nsmallest(max(1, int(len(groups) * BOTTOM_SHARE)), groups)
    tail = confidences[-window:]
    return Measures(
        tokens=len(confidences),
        mean=math.fsum(confidences) / len(confidences),
        lowest=min(groups),
        bottom10=math.fsum(bottom) / len(bottom),
        tail=math.fsum(tail) / len(tail),
    )


class WindowMonitor:
    """Online check of a streamed trace: `push` each position's candidate log-probabilities; it returns True
    once the last `window` tokens' mean confidence (over the `k` most likely) is below `threshold` (never
    before `window` tokens are in)."""

    def __init__(self, threshold: float | None, window: int = DEFAULT_WINDOW, k: int | None = None) -> None:
        self.threshold = threshold
        self.window = window
        self.k = k
        self.confidences: list[float] = []
        self._recent: deque[float] = deque()
        self._sum = 0.0
        self.stopped_at: int | None = None
        """Tokens received when the trace fell below the threshold."""

    def push(self, top_logprobs: Iterable[float]) -> bool:
        value = token_confidence(top_logprobs, self.k)
        if value is None:
            return False
        self.confidences.append(value)
        self._recent.append(value)
        self._sum += value
        if len(self._recent) > self.window:
            self._sum -= self._recent.popleft()
        if self.threshold is None or len(self._recent) < self.window:
            return False
        if self._sum / self.window < self.threshold:
            self.stopped_at = len(self.confidences)
            return True
        return False


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * min(max(q, 0.0), 100.0) / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def warmup_threshold(lowest: Sequence[float], keep_percent: float) -> float | None:
    """The online threshold: the ``100 - keep`` percentile of the warm-up traces' lowest group confidence
    (about `keep_percent` percent of traces like them stay above it); None without warm-up measures."""
    return percentile(lowest, 100.0 - keep_percent) if lowest else None


def keep_top(weights: Sequence[float], eta_percent: float) -> list[bool]:
    """Which traces are among the top `eta_percent` percent by weight (all at the cut are kept)."""
    if not weights:
        return []
    cut = percentile(weights, 100.0 - eta_percent)
    return [w >= cut for w in weights]


def weighted_vote(votes: Iterable[tuple[K, float]]) -> dict[K, float]:
    """Total weight per answer."""
    totals: dict[K, float] = {}
    for key, weight in votes:
        totals[key] = totals.get(key, 0.0) + weight
    return totals


def share_of_leader(totals: Mapping[K, float]) -> float:
    """The leading answer's share of all weight (0 when there is none)."""
    whole = math.fsum(totals.values())
    return max(totals.values()) / whole if totals and whole > 0 else 0.0
