"""Rules for the Wrong Answer List (the default Knowledge Flow knowledge).

- An item is added only when a rollout's answer differs from the reference (previous) answer and the
  rollout wrote an error report other than N/A. The item's wrong answer is the previous answer and its text
  is the error report.
- The record is append-only. The list shown in a prompt is derived from it: newest first, at most
  `per_answer` items (2) for each wrong answer, and only as many items as fit the token budget.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from knowledge_flow.answers import equivalent, normalize
from knowledge_flow.prompts import format_wrong_answer_list
from knowledge_flow.state import AnswerType, KnowledgeItem

PER_ANSWER = 2

_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def count_tokens(text: str) -> int:
    """An offline estimate of the tokens a BPE tokenizer uses for `text` (words and punctuation marks).

    Exact counts need the served model's tokenizer; budgets only need a stable, slightly generous bound.
    """
    return len(_TOKEN.findall(text))


def new_item(
    previous_answer: str | None,
    answer: str | None,
    error_report: str | None,
    iteration: int,
    answer_type: AnswerType,
) -> KnowledgeItem | None:
    """The item a rollout adds to the record, or None."""
    if previous_answer is None or answer is None or error_report is None:
        return None
    if equivalent(previous_answer, answer, answer_type):
        return None
    wrong = normalize(previous_answer, answer_type) or previous_answer
    return KnowledgeItem(wrong_answer=wrong, text=error_report.strip(), iteration=iteration)


def visible_items(
    record: Sequence[KnowledgeItem],
    budget_tokens: int,
    answer_type: AnswerType = "integer",
    per_answer: int = PER_ANSWER,
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
        cost = count_tokens(format_wrong_answer_list([item]))  # as the prompt renders it
        if used + cost > budget_tokens:
            continue
        seen[key] = seen.get(key, 0) + 1
        used += cost
        shown.append(item)
    return shown
