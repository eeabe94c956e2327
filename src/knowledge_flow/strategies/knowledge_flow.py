"""`knowledge-flow`: the original method (reference solution + Wrong Answer List)."""

from __future__ import annotations

from collections.abc import Sequence

from knowledge_flow import prompts
from knowledge_flow.knowledge import new_item, visible_items
from knowledge_flow.state import CurrentRollout, KnowledgeItem, State
from knowledge_flow.strategies.base import BaseStrategy, Distilled, History, Message


class KnowledgeFlow(BaseStrategy):
    name = "knowledge-flow"

    def visible_knowledge(self, state: State) -> list[KnowledgeItem]:
        params = state["params"]
        return visible_items(state.get("knowledge", []), params["knowledge_budget_tokens"], params["answer_type"])

    def build_messages(self, state: State, history: History) -> list[Message]:
        params = state["params"]
        if state.get("iteration", 0) == 0:
            text = prompts.first_rollout(state["problem"], params["answer_type"])
        else:
            text = prompts.later_rollout(
                state["problem"], state.get("reference"), self.visible_knowledge(state), params["answer_type"]
            )
        return self.with_prefill(state, [{"role": "user", "content": text}])

    def distill(
        self, state: State, best: CurrentRollout, kept: Sequence[CurrentRollout], update_reference: bool
    ) -> Distilled:
        """A kept rollout whose answer differs from the reference answer and that wrote an error report adds
        an item whose wrong answer is the reference (previous) answer; the best rollout's comes first."""
        answer_type = state["params"]["answer_type"]
        record = list(state.get("knowledge", []))
        previous = state.get("reference_answer")
        iteration = state.get("iteration", 0)
        added: list[tuple[str, KnowledgeItem]] = []
        for candidate in kept:
            item = new_item(previous, candidate["answer"], candidate["error_report"], iteration, answer_type)
            if item is not None and all(item["text"] != other["text"] for _, other in added):
                added.append((candidate["rollout_id"], item))
        record.extend(item for _, item in added)
        reference, answer, changed = self.reference_update(state, best, update_reference)
        return Distilled(record, reference, answer, changed, added)
