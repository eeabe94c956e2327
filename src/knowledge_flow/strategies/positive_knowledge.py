"""`positive-knowledge`: an Experimental Knowledge list the model grows and prunes.

Rules, as in the original scripts (numbers from the prompt set's ``[positive-knowledge.rules]``):

- Rollout 0 proposes an item in `[Novel Knowledge to Add to the List]`; later rollouts see the list (numbered
  as shown, oldest first) and may add one item and drop one. With `first_while_empty` (the Qwen script), a
  rollout whose list is empty is sent the rollout-0 prompt again.
- The add comes first: the new item (its leading colon removed; trimmed to `trim_fraction` of max_new_tokens by
  whole sentences where set, as the gpt-oss script does) is appended unless `[Adding?]` says No, the item is
  N/A, or it is longer than `item_max_tokens` served tokens.
- Then the drop: the last integer in the `[Least Useful to Drop]` field names the item (after the add) to
  remove; `[Dropping?]` is not consulted. Only when that field is present, the list is then capped at
  `max_items` (the oldest goes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import Field

from knowledge_flow.prompts import PromptSpec
from knowledge_flow.prompts.environment import strip_leading_colon
from knowledge_flow.records import Candidate, KnowledgeItem
from knowledge_flow.strategies.base import (
    COMMON_OPTIONAL,
    COMMON_VARIABLES,
    BaseStrategy,
    Distilled,
    RolloutPrompt,
    Rules,
    Step,
)
from knowledge_flow.strategies.knowledge_flow import numbered
from knowledge_flow.text.boxed import last_integer
from knowledge_flow.text.parsing import ParsedRollout, is_na
from knowledge_flow.text.sentences import tail_sentences

if TYPE_CHECKING:
    from knowledge_flow.state import State

ADDING, NOVEL, DROP = "adding", "novel", "drop"


class PositiveKnowledgeRules(Rules):
    solution_section: str = "Solution without EK"
    adding_section: str = "Adding?"
    novel_section: str = "Novel Knowledge to Add to the List"
    reason_section: str = "Reason to make this addition"
    dropping_section: str = "Dropping?"
    drop_section: str = "Least Useful to Drop"
    drop_reason_section: str = "Why that knowledge should be dropped?"
    trim_fraction: float | None = Field(
        None, gt=0.0, le=1.0, description="Trim a new item to this share of max_new_tokens."
    )
    item_max_tokens: int = Field(1024, ge=1, description="A longer new item is not added.")
    max_items: int = Field(10, ge=1, description="Cap on the list, applied when the drop field is present.")
    first_while_empty: bool = Field(False, description="Send the rollout-0 prompt while the list is empty.")


SPEC = PromptSpec(
    table="positive-knowledge",
    required=("first", "later"),
    optional=COMMON_OPTIONAL,
    variables=COMMON_VARIABLES | {"knowledge"},
    rules=PositiveKnowledgeRules,
)


def says_no(text: str | None) -> bool:
    return bool(text) and text.strip().strip("*").lower().startswith("no")  # type: ignore[union-attr]


class PositiveKnowledge(BaseStrategy):
    name = "positive-knowledge"
    spec = SPEC

    def section_names(self, rules: Any) -> tuple[str, ...]:
        return (
            rules.solution_section,
            rules.adding_section,
            rules.novel_section,
            rules.reason_section,
            rules.dropping_section,
            rules.drop_section,
            rules.drop_reason_section,
        )

    def extras(self, parsed: ParsedRollout, rules: Any) -> dict[str, str]:
        found = {ADDING: parsed.sections.get(rules.adding_section), NOVEL: parsed.raw.get(rules.novel_section)}
        if rules.drop_section in parsed.sections:
            found[DROP] = parsed.sections[rules.drop_section]
        return {key: value for key, value in found.items() if value}

    def visible_knowledge(self, state: State, rules: Any) -> list[KnowledgeItem]:
        return list(state.get("knowledge", []))

    def variables(self, step: Step) -> dict[str, Any]:
        return {**super().variables(step), "knowledge": numbered(self.visible_knowledge(step.state, step.rules))}

    def build_prompt(self, step: Step) -> RolloutPrompt:
        empty = not step.state.get("knowledge")
        key = "first" if step.iteration == 0 or (empty and step.rules.first_while_empty) else "later"
        return self.render(step, key, self.variables(step), step.rules.max_tokens_fraction)

    def new_item(self, step: Step, extras: dict[str, str]) -> KnowledgeItem | None:
        novel = strip_leading_colon(extras.get(NOVEL) or "").strip()
        if not novel or is_na(novel) or says_no(extras.get(ADDING)):
            return None
        fraction = step.rules.trim_fraction
        if fraction is not None:
            novel = tail_sentences(novel, max(1, int(step.params["max_new_tokens"] * fraction)), step.tokens)
        tokens = step.tokens.count(novel)
        if not novel or tokens > step.rules.item_max_tokens:
            return None
        return KnowledgeItem(wrong_answer=None, text=novel, iteration=step.iteration, tokens=tokens)

    def distill(self, step: Step, best: Candidate, kept: Sequence[Candidate], update_reference: bool) -> Distilled:
        reference, answer, changed = self.reference_update(step.state, best, update_reference)
        items = list(step.state.get("knowledge", []))
        extras = best["extras"]
        added: list[tuple[str, KnowledgeItem]] = []
        item = self.new_item(step, extras)
        if item is not None:
            items.append(item)
            added.append((best["rollout_id"], item))
        if DROP in extras:
            target = last_integer(extras[DROP])
            index = int(target) if target is not None else 0
            if 1 <= index <= len(items):
                del items[index - 1]
            if len(items) > step.rules.max_items:
                del items[0]
        return Distilled(items, reference, answer, changed, added)
