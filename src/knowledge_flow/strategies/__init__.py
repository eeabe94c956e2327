"""Strategies: data and small functions plugged into the one graph.

A strategy builds the prompt of a rollout from the state and its prompt-set table, names the sections to
parse, and says how the best rollout of an iteration updates the knowledge record and the reference
solution. The loop itself (solve -> extract_answer -> distill_knowledge -> stop_check) never changes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from knowledge_flow.options import fallback_of
from knowledge_flow.prompts import PromptSet
from knowledge_flow.records import KnowledgeItem
from knowledge_flow.strategies.base import (
    Distilled,
    Reflecting,
    RolloutPrompt,
    RolloutReader,
    RoundRollout,
    Screened,
    Step,
    Strategy,
    Streaming,
)
from knowledge_flow.strategies.deepconf import DeepConf
from knowledge_flow.strategies.knowledge_flow import KnowledgeFlow
from knowledge_flow.strategies.markovian import Markovian
from knowledge_flow.strategies.positive_knowledge import PositiveKnowledge
from knowledge_flow.strategies.regeneration import Regeneration
from knowledge_flow.strategies.self_consistency import SelfConsistency
from knowledge_flow.strategies.trt import Trt

if TYPE_CHECKING:
    from knowledge_flow.state import State

_ALL: tuple[Strategy, ...] = (
    KnowledgeFlow(),
    Regeneration(),
    PositiveKnowledge(),
    Markovian(),
    SelfConsistency(),
    Trt(),
    DeepConf(),
)
STRATEGIES: dict[str, Strategy] = {strategy.name: strategy for strategy in _ALL}


def default_text(name: str) -> str | None:
    """The defaults of an option a strategy may default differently, for help texts: ``default: 512;
    deepconf: 64000`` (None for other options)."""
    own = [f"{strategy.name}: {strategy.defaults[name]}" for strategy in _ALL if name in strategy.defaults]
    fallback = fallback_of(name)
    if not own and fallback is None:
        return None
    return "; ".join([f"default: {'none' if fallback is None else fallback}", *own])


def shown_knowledge(state: State, prompt_set: PromptSet) -> list[KnowledgeItem]:
    """The knowledge the run's next prompt shows, in display order."""
    strategy = get_strategy(state["params"]["strategy"])
    return strategy.visible_knowledge(state, prompt_set.table(strategy.spec).rules)


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; choose one of: {', '.join(sorted(STRATEGIES))}") from None


__all__ = [
    "STRATEGIES",
    "Distilled",
    "Reflecting",
    "RolloutPrompt",
    "RolloutReader",
    "RoundRollout",
    "Screened",
    "Step",
    "Strategy",
    "Streaming",
    "default_text",
    "get_strategy",
    "shown_knowledge",
]
