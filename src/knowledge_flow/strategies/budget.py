"""A run's budget in traces (`trace_budget`): a first wave (deepconf's warm-up, else `thinkers` rollouts), then
waves of `thinkers`, the last one trimmed so that exactly the budget is sent unless the stop policy ends the
run earlier.

A run extended past its budget (a larger `iterations` on resume) continues with whole waves.
"""

from __future__ import annotations

import math


def waves_for(budget: int, first: int, thinkers: int) -> int:
    """The iterations that send `budget` traces: the first wave of `first`, then waves of `thinkers`."""
    if budget < first:
        raise ValueError(f"trace_budget ({budget}) is below the first wave's {first} traces")
    return 1 + math.ceil((budget - first) / thinkers)


def budget_of(iterations: int, first: int, thinkers: int) -> int:
    """The traces `iterations` whole waves send."""
    return first + thinkers * (iterations - 1)


def wave_size(iteration: int, first: int, thinkers: int, budget: int | None) -> int:
    """The rollouts of wave `iteration` (0-based) under `budget` (None: whole waves)."""
    if iteration == 0:
        return first
    left = budget - first - thinkers * (iteration - 1) if budget is not None else thinkers
    return min(thinkers, left) if left > 0 else thinkers
