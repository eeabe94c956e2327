"""`knowledge-flow`: the original method (reference solution + Wrong Answer List)."""

from __future__ import annotations

from knowledge_flow import prompts
from knowledge_flow.answers import equivalent
from knowledge_flow.knowledge import new_item, visible_items
from knowledge_flow.state import CurrentRollout, KnowledgeItem, State
from knowledge_flow.strategies.base import Distilled


class KnowledgeFlow:
    name = "knowledge-flow"

    def visible_knowledge(self, state: State) -> list[KnowledgeItem]:
        params = state["params"]
        return visible_items(state.get("knowledge", []), params["knowledge_budget_tokens"], params["answer_type"])

    def build_messages(self, state: State) -> list[dict[str, str]]:
        params = state["params"]
        if state.get("iteration", 0) == 0:
            text = prompts.first_rollout(state["problem"], params["answer_type"])
        else:
            text = prompts.later_rollout(
                state["problem"], state.get("reference"), self.visible_knowledge(state), params["answer_type"]
            )
        messages = [{"role": "user", "content": text}]
        if params.get("prefill"):
            messages.append({"role": "assistant", "content": params["prefill"] or ""})
        return messages

    def distill(self, state: State, current: CurrentRollout) -> Distilled:
        """The reference becomes this rollout's summary and answer; a changed answer with an error report
        adds an item whose wrong answer is the previous answer.

        A rollout with no answer (unparsable or cut off) adds nothing and leaves the reference as it was,
        so one broken output never erases what earlier rollouts established.
        """
        answer_type = state["params"]["answer_type"]
        record = list(state.get("knowledge", []))
        previous = state.get("reference_answer")
        if current["answer"] is None:
            return Distilled(record, None, state.get("reference"), previous, None)
        changed = None if state.get("iteration", 0) == 0 else not equivalent(previous, current["answer"], answer_type)
        item = new_item(previous, current["answer"], current["error_report"], state.get("iteration", 0), answer_type)
        if item is not None:
            record.append(item)
        reference = current["summary"] if current["summary"] else state.get("reference")
        return Distilled(record, item, reference, current["answer"], changed)
