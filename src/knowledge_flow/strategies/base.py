"""What every strategy provides."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from knowledge_flow.state import CurrentRollout, KnowledgeItem, State


@dataclass(frozen=True)
class Distilled:
    """How one parsed rollout changes the state."""

    knowledge: list[KnowledgeItem]
    """The whole new knowledge record."""
    added: KnowledgeItem | None
    reference: str | None
    reference_answer: str | None
    changed: bool | None
    """Whether the answer differs from the reference answer (None for the first rollout)."""


class Strategy(Protocol):
    name: str

    def build_messages(self, state: State) -> list[dict[str, str]]:
        """The chat messages of the next rollout."""
        ...

    def visible_knowledge(self, state: State) -> list[KnowledgeItem]:
        """The knowledge items the next prompt shows, in display order."""
        ...

    def distill(self, state: State, current: CurrentRollout) -> Distilled:
        """The knowledge record and reference after `current`."""
        ...
