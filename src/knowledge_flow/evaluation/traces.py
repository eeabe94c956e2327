"""Per-trace figures of an evaluation run: every rollout is a trace, whatever the strategy (the thinkers of
an iteration, DeepConf's waves, RSA's population), so runs are judged per trace and not only by the one answer
each iteration reports.

- A problem's traces are its rollouts that were not kept out of votes by the strategy (DeepConf's stopped,
  cancelled or below-threshold traces are left out); a failed trace, or one without an answer, is a wrong trace
  that does not vote.
- pass@1: per problem, the share of its traces whose answer is right; averaged over the finished problems.
- pass@1 per iteration: the same over each iteration's traces (for RSA, the population's accuracy per loop).
- maj@k, for k = 1, 2, 4, ... up to the fewest traces a finished problem has (and that number itself): per
  problem, the expected correctness of the plurality answer of k of its traces drawn uniformly without
  replacement; a tie among t answers counts 1/t for the right one (a random tie-break); k traces without an
  answer count 0. The expectation is exact (every subset) when a problem has at most `EXACT_SUBSETS` subsets of
  k traces, else the mean over `DRAWS` subsets drawn by a generator seeded with the problem and k (the same
  figures every time). Averaged over the finished problems. For strategies whose traces are not independent
  (knowledge-flow, TRT, RSA's later loops) maj@k mixes traces of different stages: read it with that in mind.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from knowledge_flow.evaluation.revote import trace_answers
from knowledge_flow.evaluation.rows import EvalItemRow
from knowledge_flow.persistence.store import RolloutStore
from knowledge_flow.records import AnswerType
from knowledge_flow.text.answers import equivalent, normalize

#: Subsets enumerated exactly up to this many; above it, this many seeded draws.
EXACT_SUBSETS = 256
DRAWS = 256


@dataclass(frozen=True)
class Trace:
    """One trace of a problem, graded."""

    iteration: int
    key: str | None
    """Its normalised answer (None: no answer)."""
    right: bool


@dataclass(frozen=True)
class TraceFigures:
    problems: int
    """Finished problems the figures are over."""
    traces: int
    fewest_traces: int
    most_traces: int
    pass_at_1: float
    maj_at_k: dict[int, float] = field(default_factory=dict)
    per_iteration: list[float] = field(default_factory=list)
    """pass@1 of each iteration's traces, over the problems that ran it."""


def ks_for(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself."""
    ks = [2**i for i in range(max(0, n).bit_length()) if 2**i <= n]
    return ks + ([n] if n and ks[-1] != n else [])


def plurality_credit(subset: Sequence[Trace]) -> float:
    """1/t when the right answer is among the t answers tied for the most votes, else 0."""
    counts: dict[str, int] = {}
    right: dict[str, bool] = {}
    for trace in subset:
        if trace.key is None:
            continue
        counts[trace.key] = counts.get(trace.key, 0) + 1
        right[trace.key] = right.get(trace.key, False) or trace.right
    if not counts:
        return 0.0
    top = max(counts.values())
    leaders = [key for key, count in counts.items() if count == top]
    return sum(1 for key in leaders if right[key]) / len(leaders)


def maj_at(traces: Sequence[Trace], k: int, seed: str) -> float:
    """The expected plurality credit of k of `traces` (see the module)."""
    n = len(traces)
    if k <= 0 or k > n:
        raise ValueError(f"k must be between 1 and {n}, got {k}")
    if math.comb(n, k) <= EXACT_SUBSETS:
        subsets = list(itertools.combinations(traces, k))
        return sum(plurality_credit(s) for s in subsets) / len(subsets)
    generator = random.Random(seed)
    return sum(plurality_credit(generator.sample(list(traces), k)) for _ in range(DRAWS)) / DRAWS


def graded_traces(
    store: RolloutStore, items: Sequence[EvalItemRow], params: dict[str, Any], answer_rule: str
) -> dict[str, list[Trace]]:
    """Per finished item (by problem id), its traces graded against its gold answer."""
    answer_type: AnswerType = params["answer_type"]
    done = [item for item in items if item.status == "done" and item.run_id]
    found = trace_answers(
        store,
        [item.run_id for item in done if item.run_id],
        answer_rule,
        answer_type,
        str(params.get("model_family", "instruct")),
    )
    graded: dict[str, list[Trace]] = {}
    for item in done:
        graded[str(item.problem_id)] = [
            Trace(row.iteration, normalize(answer, answer_type), equivalent(item.gold, answer, answer_type))
            for row, answer in found.get(item.run_id or "", [])
            if row.stop_reason is None
        ]
    return graded


def trace_figures(problems: dict[str, list[Trace]]) -> TraceFigures | None:
    """The figures over `problems` (problem id -> its traces); None when no problem has a trace."""
    having = {pid: traces for pid, traces in problems.items() if traces}
    if not having:
        return None
    sizes = [len(traces) for traces in having.values()]
    fewest = min(sizes)
    maj = {
        k: sum(maj_at(traces, k, f"{pid}:{k}") for pid, traces in having.items()) / len(having) for k in ks_for(fewest)
    }
    depth = max(t.iteration for traces in having.values() for t in traces) + 1
    per_iteration = []
    for iteration in range(depth):
        shares = [
            sum(t.right for t in wave) / len(wave)
            for traces in having.values()
            if (wave := [t for t in traces if t.iteration == iteration])
        ]
        per_iteration.append(sum(shares) / len(shares) if shares else 0.0)
    return TraceFigures(
        problems=len(having),
        traces=sum(sizes),
        fewest_traces=fewest,
        most_traces=max(sizes),
        pass_at_1=sum(sum(t.right for t in traces) / len(traces) for traces in having.values()) / len(having),
        maj_at_k=maj,
        per_iteration=per_iteration,
    )
