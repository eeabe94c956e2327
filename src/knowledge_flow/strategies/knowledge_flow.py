"""`knowledge-flow`: the original method (reference solution + Wrong Answer List).

Rules of the Wrong Answer List (the prompt set's top-level ``[rules]`` table sets the numbers):

- An item is added when a kept rollout's answer differs from the reference (previous) answer and the rollout
  wrote the error-report section (`report_section`; with `skip_na_report`, not "N/A"). Its wrong answer is the
  previous answer; its text is the report section's raw text (`item_text = "report"`) or everything after
  the report header, summary and answer included (`"after_header"`, as the original gpt-oss script does).
- The record is append-only. A prompt shows it newest first, at most `items_per_wrong_answer` items for each
  wrong answer (2 in the Qwen script, 1 in the gpt-oss one), within the run's knowledge token budget.
- Each item's cost is counted once, when it is made, with the served model's tokenizer where there is one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from knowledge_flow.answers import equivalent, normalize
from knowledge_flow.parsing import REPORT, ParsedRollout
from knowledge_flow.prompts import PromptSpec
from knowledge_flow.records import AnswerType, CurrentRollout, KnowledgeItem
from knowledge_flow.strategies.base import (
    COMMON_OPTIONAL,
    COMMON_VARIABLES,
    ITEM_OVERHEAD,
    BaseStrategy,
    Distilled,
    Rules,
    Step,
    item_tokens,
)
from knowledge_flow.tokens import TokenCounter

if TYPE_CHECKING:
    from knowledge_flow.state import State

ITEM = "item"
"""The extras key of the text a rollout's item would take."""


class KnowledgeFlowRules(Rules):
    items_per_wrong_answer: int = Field(2, ge=1, description="Items shown per wrong answer, newest first.")
    report_section: str = Field(REPORT, min_length=1, description="The output section holding the error report.")
    item_text: Literal["report", "after_header"] = Field(
        "report", description="report: the report section only; after_header: everything after its header."
    )
    skip_na_report: bool = Field(True, description="Whether a report of N/A adds no item.")


SPEC = PromptSpec(
    table=None,
    required=("first", "later"),
    optional=COMMON_OPTIONAL,
    variables=COMMON_VARIABLES | {"knowledge"},
    rules=KnowledgeFlowRules,
)


def new_item(
    previous_answer: str | None,
    answer: str | None,
    text: str | None,
    iteration: int,
    answer_type: AnswerType,
    counter: TokenCounter,
) -> KnowledgeItem | None:
    """The item a rollout adds to the record, or None."""
    if previous_answer is None or answer is None or text is None:
        return None
    if equivalent(previous_answer, answer, answer_type):
        return None
    wrong = normalize(previous_answer, answer_type) or previous_answer
    text = text.strip()
    return KnowledgeItem(wrong_answer=wrong, text=text, iteration=iteration, tokens=counter.count(text) + ITEM_OVERHEAD)


def visible_items(
    record: Sequence[KnowledgeItem], budget_tokens: int, answer_type: AnswerType = "integer", per_answer: int = 2
) -> list[KnowledgeItem]:
    """The items a prompt shows: newest first, at most `per_answer` per wrong answer, within the budget.

    Items are taken newest first while they fit; an item that does not fit is skipped, and older, shorter
    items may still fit after it.
    """
    shown: list[KnowledgeItem] = []
    seen: dict[str, int] = {}
    used = 0
    for item in reversed(record):
        wrong = item["wrong_answer"] or ""
        key = normalize(wrong, answer_type) or wrong
        if seen.get(key, 0) >= per_answer:
            continue
        cost = item_tokens(item)
        if used + cost > budget_tokens:
            continue
        seen[key] = seen.get(key, 0) + 1
        used += cost
        shown.append(item)
    return shown


def numbered(items: Sequence[KnowledgeItem]) -> list[dict[str, Any]]:
    """Items as prompt templates see them: `number` (1-based, display order), `wrong_answer`, `text`."""
    return [
        {"number": number, "wrong_answer": item["wrong_answer"], "text": item["text"]}
        for number, item in enumerate(items, start=1)
    ]


class KnowledgeFlow(BaseStrategy):
    name = "knowledge-flow"
    spec = SPEC

    def section_names(self, rules: Any) -> tuple[str, ...]:
        return (rules.report_section,)

    def report_section(self, rules: Any) -> str:
        return str(rules.report_section)

    def extras(self, parsed: ParsedRollout, rules: Any) -> dict[str, str]:
        if rules.report_section not in parsed.sections:
            return {}
        if rules.skip_na_report and parsed.error_report is None:
            return {}
        text = parsed.after_header(rules.report_section) if rules.item_text == "after_header" else None
        text = text or parsed.raw.get(rules.report_section)
        return {ITEM: text} if text else {}

    def visible_knowledge(self, state: State, rules: Any) -> list[KnowledgeItem]:
        params = state["params"]
        return visible_items(
            state.get("knowledge", []),
            params["knowledge_budget_tokens"],
            params["answer_type"],
            rules.items_per_wrong_answer,
        )

    def variables(self, step: Step) -> dict[str, Any]:
        return {**super().variables(step), "knowledge": numbered(self.visible_knowledge(step.state, step.rules))}

    def distill(
        self, step: Step, best: CurrentRollout, kept: Sequence[CurrentRollout], update_reference: bool
    ) -> Distilled:
        """A kept rollout whose answer differs from the reference answer and that wrote an error report adds
        an item whose wrong answer is the reference (previous) answer; the best rollout's comes first."""
        state = step.state
        answer_type = state["params"]["answer_type"]
        record = list(state.get("knowledge", []))
        previous = state.get("reference_answer")
        added: list[tuple[str, KnowledgeItem]] = []
        for candidate in kept:
            text = candidate["extras"].get(ITEM)
            item = new_item(previous, candidate["answer"], text, step.iteration, answer_type, step.tokens)
            if item is not None and all(item["text"] != other["text"] for _, other in added):
                added.append((candidate["rollout_id"], item))
        record.extend(item for _, item in added)
        reference, answer, changed = self.reference_update(state, best, update_reference)
        return Distilled(record, reference, answer, changed, added)
