"""Every prompt text, versioned. Change PROMPT_VERSION whenever a text here changes.

The Knowledge Flow texts follow the original method: rollout 0 solves the problem and writes a
`[Summary]` and an `[Answer]`; each later rollout sees the previous rollout's summary as a reference
solution and a Wrong Answer List, and writes an `[Error Report]` when it changes the answer.
"""

from __future__ import annotations

from collections.abc import Sequence

from knowledge_flow.state import AnswerType, KnowledgeItem

PROMPT_VERSION = "kf-2026.11-1"

GUIDELINE = "Let's solve this problem. Be thorough."

NO_REFERENCE = "No reference solution is available."
EMPTY_LIST = "N/A"

_ANSWER_SLOT: dict[AnswerType, str] = {
    "integer": "<integer>",
    "latex": "<answer in LaTeX>",
    "text": "<answer>",
}


def answer_line(answer_type: AnswerType) -> str:
    return f"[Answer]: Therefore, final answer is \\boxed{{{_ANSWER_SLOT[answer_type]}}}."


def summary_line() -> str:
    return (
        "[Summary]: A detailed step-by-step summary of your solution: the key steps and results, "
        "where it may have gone wrong, and the final answer."
    )


def error_report_line(answer_type: AnswerType) -> str:
    slot = _ANSWER_SLOT[answer_type]
    return (
        "[Error Report]: If your final answer differs from the answer of the Reference Solution, explain why "
        f'the reference answer is wrong. Start with "The Answer cannot be {slot}, because ..." (using the '
        'reference answer) and end with "The correct approach is ...". Do not state your new answer in the '
        'Error Report. If your final answer is the same as the reference answer, write "N/A".'
    )


def first_rollout(problem: str, answer_type: AnswerType) -> str:
    """Rollout 0: the problem, the guideline and the output format."""
    return (
        f"{problem}\n\n"
        f"{GUIDELINE}\n\n"
        "## Output Format\n"
        "After solving, write your final response in exactly this format:\n"
        f"{summary_line()}\n"
        f"{answer_line(answer_type)}"
    )


def format_wrong_answer_list(items: Sequence[KnowledgeItem]) -> str:
    """Items are given in display order (newest first)."""
    if not items:
        return EMPTY_LIST
    lines = []
    for number, item in enumerate(items, start=1):
        text = " ".join(item["text"].split())
        lines.append(f"{number}. Wrong answer: {item['wrong_answer']}\n   Why it is wrong: {text}")
    return "\n".join(lines)


def later_rollout(
    problem: str,
    reference: str | None,
    wrong_answers: Sequence[KnowledgeItem],
    answer_type: AnswerType,
) -> str:
    """Rollout k>0: problem, instruction, reference solution, Wrong Answer List, output format."""
    return (
        "## Problem\n"
        f"{problem}\n\n"
        "## Instruction\n"
        "Solve the problem from scratch first, thinking independently. Then check your solution against the "
        "Wrong Answer List and the Reference Solution below. Every answer in the Wrong Answer List has been "
        "shown to be wrong, with the reason: never give one of them as your final answer. The Reference "
        "Solution is the summary of the latest attempt; it may contain mistakes.\n\n"
        "## Reference Solution\n"
        f"{reference.strip() if reference and reference.strip() else NO_REFERENCE}\n\n"
        "## Wrong Answer List\n"
        f"{format_wrong_answer_list(wrong_answers)}\n\n"
        "## Output Format\n"
        "After solving, write your final response in exactly this format:\n"
        f"{error_report_line(answer_type)}\n"
        f"{summary_line()}\n"
        f"{answer_line(answer_type)}"
    )
