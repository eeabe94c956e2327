"""Runs at equal compute: each run's final-answer accuracy after each iteration (loop, wave) against its
cumulative tokens per problem, read at token budgets every run reaches.

- A run's curve: after iteration k, (mean tokens per problem spent in iterations 0..k, calls outside the
  rollouts included; the share of problems whose final answer had the run stopped after k is right).
- Its accuracy at budget B: the point of its last iteration whose tokens are at most B (what the run had
  answered with B tokens per problem); a run has data at B when its first point is at most B and its last at
  least B.
- The budgets: every run's points that lie where all runs have data (from the largest first point to the
  smallest last point), at most `MAX_BUDGETS` of them spread over that range, first and last included.
  No budget when the ranges do not overlap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

MAX_BUDGETS = 8


@dataclass(frozen=True)
class TokenCurve:
    label: str
    points: list[tuple[float, float]]
    """(cumulative tokens per problem, final-answer accuracy) after each iteration, in order."""


@dataclass(frozen=True)
class EqualTokens:
    budgets: list[float]
    """Tokens per problem."""
    accuracy: dict[str, list[float]]
    """Per run label, its accuracy at each budget."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def accuracy_at(curve: TokenCurve, budget: float) -> float | None:
    """The accuracy of the last point within `budget` (None when even the first point is above it)."""
    within = [accuracy for tokens, accuracy in curve.points if tokens <= budget]
    return within[-1] if within else None


def common_budgets(curves: Sequence[TokenCurve], limit: int = MAX_BUDGETS) -> list[float]:
    """The budgets where every curve has data (see the module)."""
    if not curves or any(not curve.points for curve in curves):
        return []
    low = max(curve.points[0][0] for curve in curves)
    high = min(curve.points[-1][0] for curve in curves)
    if low > high:
        return []
    points = sorted({tokens for curve in curves for tokens, _ in curve.points if low <= tokens <= high} | {low, high})
    if len(points) <= limit:
        return points
    step = (len(points) - 1) / (limit - 1)
    return [points[round(i * step)] for i in range(limit)]


def equal_tokens(curves: Sequence[TokenCurve]) -> EqualTokens:
    budgets = common_budgets(curves)
    accuracy = {curve.label: [accuracy_at(curve, budget) or 0.0 for budget in budgets] for curve in curves}
    return EqualTokens(budgets, accuracy)
