"""`regeneration`: each rollout rewrites a `[Things to Avoid]` list that replaces the previous one.

Rules (the prompt set's ``[regeneration.rules]``): the list is read from `list_section` (rollout 0 writes
one too); with `trim_fraction`, it is trimmed to that share of max_new_tokens, counted in the served model's
tokens, by keeping its last whole sentences (the original gpt-oss script trims to 0.1; the Qwen one does not
trim). The run option `avoid_budget_tokens` overrides the trim budget. No deduplication. A rollout that
writes no list keeps the old one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import Field

from knowledge_flow.prompts import PromptSpec
from knowledge_flow.records import Candidate, KnowledgeItem
from knowledge_flow.strategies.base import COMMON_OPTIONAL, COMMON_VARIABLES, BaseStrategy, Distilled, Rules, Step
from knowledge_flow.text.parsing import ParsedRollout
from knowledge_flow.text.sentences import tail_sentences

if TYPE_CHECKING:
    from knowledge_flow.state import State

LIST = "list"


class RegenerationRules(Rules):
    list_section: str = Field("Things to Avoid", min_length=1, description="The output section holding the list.")
    trim_fraction: float | None = Field(
        None, gt=0.0, le=1.0, description="Trim the list to this share of max_new_tokens (whole sentences)."
    )


SPEC = PromptSpec(
    table="regeneration",
    required=("first", "later"),
    optional=COMMON_OPTIONAL,
    variables=COMMON_VARIABLES | {"avoid"},
    rules=RegenerationRules,
)


class Regeneration(BaseStrategy):
    name = "regeneration"
    spec = SPEC

    def section_names(self, rules: Any) -> tuple[str, ...]:
        return (rules.list_section,)

    def extras(self, parsed: ParsedRollout, rules: Any) -> dict[str, str]:
        text = parsed.raw.get(rules.list_section)
        return {LIST: text} if text else {}

    def visible_knowledge(self, state: State, rules: Any) -> list[KnowledgeItem]:
        return list(state.get("knowledge", []))[-1:]

    def variables(self, step: Step) -> dict[str, Any]:
        current = self.visible_knowledge(step.state, step.rules)
        return {**super().variables(step), "avoid": current[0]["text"] if current else None}

    def trim_budget(self, step: Step) -> int | None:
        override = step.params.get("avoid_budget_tokens")
        if override is not None:
            return int(override)
        fraction = step.rules.trim_fraction
        return None if fraction is None else max(1, int(step.params["max_new_tokens"] * fraction))

    def distill(self, step: Step, best: Candidate, kept: Sequence[Candidate], update_reference: bool) -> Distilled:
        reference, answer, changed = self.reference_update(step.state, best, update_reference)
        written = best["extras"].get(LIST)
        if not written:
            return Distilled(list(step.state.get("knowledge", [])), reference, answer, changed)
        budget = self.trim_budget(step)
        text = written.strip() if budget is None else tail_sentences(written, budget, step.tokens)
        item = KnowledgeItem(wrong_answer=None, text=text, iteration=step.iteration, tokens=step.tokens.count(text))
        return Distilled([item], reference, answer, changed, [(best["rollout_id"], item)])
