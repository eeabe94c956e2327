"""`regeneration`: each rollout rewrites a `[Things to Avoid]` list that replaces the previous one.

The new list is trimmed to `avoid_budget_tokens` (default 10% of max new tokens) by keeping its last whole
sentences that fit (pysbd, offline). No deduplication. A rollout that writes no list keeps the old one.
"""

from __future__ import annotations

from collections.abc import Sequence

from knowledge_flow import prompts
from knowledge_flow.sentences import tail_sentences
from knowledge_flow.state import CurrentRollout, KnowledgeItem, State
from knowledge_flow.strategies.base import BaseStrategy, Distilled, History, Message


class Regeneration(BaseStrategy):
    name = "regeneration"
    section_names: tuple[str, ...] = (prompts.THINGS_TO_AVOID,)
    state_sections: tuple[str, ...] = (prompts.THINGS_TO_AVOID,)

    def visible_knowledge(self, state: State) -> list[KnowledgeItem]:
        return list(state.get("knowledge", []))[-1:]

    def build_messages(self, state: State, history: History) -> list[Message]:
        current = self.visible_knowledge(state)
        text = prompts.regeneration_rollout(
            state["problem"],
            state.get("iteration", 0),
            state.get("reference"),
            current[0]["text"] if current else None,
            state["params"]["answer_type"],
        )
        return self.with_prefill(state, [{"role": "user", "content": text}])

    def distill(
        self, state: State, best: CurrentRollout, kept: Sequence[CurrentRollout], update_reference: bool
    ) -> Distilled:
        reference, answer, changed = self.reference_update(state, best, update_reference)
        written = best["extras"].get(prompts.THINGS_TO_AVOID)
        if not written:
            return Distilled(list(state.get("knowledge", [])), reference, answer, changed)
        text = tail_sentences(written, state["params"]["avoid_budget_tokens"])
        item = KnowledgeItem(wrong_answer=None, text=text, iteration=state.get("iteration", 0))
        return Distilled([item], reference, answer, changed, [(best["rollout_id"], item)])
