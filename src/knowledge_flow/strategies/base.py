"""What every strategy provides, and the defaults most of them share."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from knowledge_flow.answers import equivalent
from knowledge_flow.state import CurrentRollout, KnowledgeItem, RunParams, State

Message = dict[str, str]


class History(Protocol):
    """Read access to stored rollouts (the rollout store)."""

    def rollout_text(self, rollout_id: str) -> tuple[list[Message], str] | None:
        """The prompt messages and the output text of a stored rollout."""
        ...

    def best_rollout_id(self, run_id: str, iteration: int) -> str | None:
        """The id of the rollout whose answer counted in `iteration` (the best kept thinker)."""
        ...


@dataclass(frozen=True)
class Distilled:
    """How one iteration changes the state."""

    knowledge: list[KnowledgeItem]
    """The whole new knowledge record."""
    reference: str | None
    reference_answer: str | None
    changed: bool | None
    """Whether the iteration's answer differs from the reference answer (None for the first iteration)."""
    added: list[tuple[str, KnowledgeItem]] = field(default_factory=list)
    """(rollout id, item) for each item this iteration added."""


class Strategy(Protocol):
    name: str
    section_names: tuple[str, ...]
    """Output sections the parser must recognise (besides Error Report, Summary, Answer)."""
    state_sections: tuple[str, ...]
    """The sections `distill` needs, copied into the state (the others stay in the rollout store only)."""

    def build_messages(self, state: State, history: History) -> list[Message]:
        """The chat messages of the next rollout (the same for every thinker of an iteration)."""
        ...

    def max_tokens(self, params: RunParams) -> int:
        """Tokens a rollout may generate."""
        ...

    def text_to_parse(self, messages: Sequence[Message], content: str) -> str:
        """The text the answer and sections are read from."""
        ...

    def visible_knowledge(self, state: State) -> list[KnowledgeItem]:
        """The knowledge items the next prompt shows, in display order."""
        ...

    def distill(
        self, state: State, best: CurrentRollout, kept: Sequence[CurrentRollout], update_reference: bool
    ) -> Distilled:
        """The knowledge record and reference after an iteration whose best rollout is `best`."""
        ...


class BaseStrategy:
    """Defaults: the full generation budget, prefill + output parsed together, no knowledge shown, and the
    reference solution following the best rollout's summary and answer."""

    name = "base"
    section_names: tuple[str, ...] = ()
    state_sections: tuple[str, ...] = ()

    def max_tokens(self, params: RunParams) -> int:
        return params["max_new_tokens"]

    def text_to_parse(self, messages: Sequence[Message], content: str) -> str:
        if messages and messages[-1]["role"] == "assistant":
            return messages[-1]["content"] + content
        return content

    def visible_knowledge(self, state: State) -> list[KnowledgeItem]:
        return []

    def with_prefill(self, state: State, messages: list[Message]) -> list[Message]:
        prefill = state["params"].get("prefill")
        if prefill:
            messages.append({"role": "assistant", "content": prefill})
        return messages

    def reference_update(
        self, state: State, best: CurrentRollout, update_reference: bool
    ) -> tuple[str | None, str | None, bool | None]:
        """(reference, reference answer, changed). A rollout with no answer, or an uncertain iteration,
        leaves the reference as it was, so one broken output never erases what earlier rollouts found."""
        previous = state.get("reference_answer")
        reference = state.get("reference")
        if best["answer"] is None:
            return reference, previous, None
        first = state.get("iteration", 0) == 0
        changed = None if first else not equivalent(previous, best["answer"], state["params"]["answer_type"])
        if not update_reference:
            return reference, previous, changed
        return (best["summary"] or reference), best["answer"], changed

    def distill(
        self, state: State, best: CurrentRollout, kept: Sequence[CurrentRollout], update_reference: bool
    ) -> Distilled:
        reference, answer, changed = self.reference_update(state, best, update_reference)
        return Distilled(list(state.get("knowledge", [])), reference, answer, changed)
