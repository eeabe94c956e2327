"""Strategies: data and small functions plugged into the one graph.

A strategy builds the messages of a rollout from the state, says how a parsed rollout updates the
knowledge record and the reference solution, and which knowledge a prompt shows. The loop itself
(solve -> extract_answer -> distill_knowledge -> stop_check) never changes.
"""

from __future__ import annotations

from knowledge_flow.strategies.base import Distilled, Strategy
from knowledge_flow.strategies.knowledge_flow import KnowledgeFlow

STRATEGIES: dict[str, Strategy] = {s.name: s for s in (KnowledgeFlow(),)}


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; choose one of: {', '.join(sorted(STRATEGIES))}") from None


__all__ = ["STRATEGIES", "Distilled", "Strategy", "get_strategy"]
