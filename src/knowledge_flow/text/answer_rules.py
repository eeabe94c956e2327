"""Answer rules for re-grading stored rollouts without sending a request (`kflow report --answer-rule`).

- ``default``: the product's parser (the last balanced ``\\boxed{}`` of the final text; for integer problems
  the last integer as a fallback), as the run itself graded.
- ``last-boxed``: the last ``\\boxed{}`` of the final text, no fallback.
- ``first-boxed``: the first ``\\boxed{-?digits}`` anywhere in the output, reasoning included, no fallback (the
  original gpt-oss script's rule; for non-integer sets, the first balanced box).
- ``last-integer``: the last integer of the final text.
- ``paper``: the original scripts' rule for the run's model family: gpt-oss as ``first-boxed``; Qwen3-Thinking
  and instruct models the last ``\\boxed{-?digits}`` anywhere in the output, else its last integer.

The output "anywhere" is the whole generation as the original scripts saw it: reasoning, then final text.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from knowledge_flow.records import AnswerType
from knowledge_flow.text.boxed import boxed_contents, last_boxed, last_integer, normalize_integer
from knowledge_flow.text.parsing import not_an_answer, read_answer, split_thinking

ANSWER_RULES = ("default", "last-boxed", "first-boxed", "last-integer", "paper")
_BOXED_INTEGER = re.compile(r"\\boxed\{([-\u2212]?\d+)\}")


def _whole(content: str, reasoning: str | None) -> str:
    return "\n".join(part for part in (reasoning, content) if part)


def _final(content: str, reasoning: str | None) -> str:
    thinking, final = split_thinking(content, reasoning)
    return final or thinking


def _boxed_value(boxed: str | None, answer_type: AnswerType) -> str | None:
    if boxed is None or not_an_answer(boxed, answer_type):
        return None
    return (normalize_integer(boxed) or boxed) if answer_type == "integer" else boxed


def _first_boxed(content: str, reasoning: str | None, answer_type: AnswerType) -> str | None:
    whole = _whole(content, reasoning)
    if answer_type == "integer":
        match = _BOXED_INTEGER.search(whole)
        return normalize_integer(match.group(1)) if match else None
    found = [box for box in boxed_contents(whole) if box]
    return _boxed_value(found[0], answer_type) if found else None


def _last_boxed_or_integer(content: str, reasoning: str | None, answer_type: AnswerType) -> str | None:
    whole = _whole(content, reasoning)
    if answer_type != "integer":
        return _boxed_value(last_boxed(whole), answer_type)
    matches = _BOXED_INTEGER.findall(whole)
    return normalize_integer(matches[-1]) if matches else last_integer(whole)


Rule = Callable[[str, str | None, AnswerType], str | None]

_RULES: dict[str, Rule] = {
    "default": lambda content, reasoning, kind: read_answer(_final(content, reasoning), kind),
    "last-boxed": lambda content, reasoning, kind: _boxed_value(last_boxed(_final(content, reasoning)), kind),
    "first-boxed": _first_boxed,
    "last-integer": lambda content, reasoning, kind: last_integer(_final(content, reasoning)),
}


def check_rule(rule: str) -> str:
    if rule not in ANSWER_RULES:
        raise ValueError(f"unknown answer rule {rule!r}; choose one of: {', '.join(ANSWER_RULES)}")
    return rule


def regrade_answer(rule: str, content: str, reasoning: str | None, answer_type: AnswerType, family: str) -> str | None:
    """The answer `rule` reads from a stored output."""
    check_rule(rule)
    if rule == "paper":
        chosen: Rule = _first_boxed if family == "gpt-oss" else _last_boxed_or_integer
        return chosen(content, reasoning, answer_type)
    return _RULES[rule](content, reasoning, answer_type)
