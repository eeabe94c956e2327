"""The prompt texts of knowledge-flow before prompts became data: the oracle for the `kf-instruct` set, which
must reproduce them byte for byte."""

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


# --- regeneration -------------------------------------------------------------------------------------
THINGS_TO_AVOID = "Things to Avoid"


def things_to_avoid_line() -> str:
    return (
        "[Things to Avoid]: A standalone list of max 10 answers to avoid: what did not work, which answer is "
        "definitely wrong and why. Rewrite the whole list each time: keep earlier entries that still hold."
    )


def regeneration_rollout(
    problem: str, iteration: int, reference: str | None, avoid: str | None, answer_type: AnswerType
) -> str:
    """Every rollout (rollout 0 included) writes a new Things to Avoid list that replaces the old one."""
    output_format = (
        "## Output Format\n"
        "After solving, write your final response in exactly this format:\n"
        f"{things_to_avoid_line()}\n"
        f"{summary_line()}\n"
        f"{answer_line(answer_type)}"
    )
    if iteration == 0:
        return f"{problem}\n\n{GUIDELINE}\n\n{output_format}"
    return (
        "## Problem\n"
        f"{problem}\n\n"
        "## Instruction\n"
        "Solve the problem from scratch first, thinking independently. Then check your solution against the "
        "Things to Avoid and the Reference Solution below; the Reference Solution is the summary of the latest "
        "attempt and may contain mistakes.\n\n"
        "## Reference Solution\n"
        f"{reference.strip() if reference and reference.strip() else NO_REFERENCE}\n\n"
        "## Things to Avoid\n"
        f"{avoid.strip() if avoid and avoid.strip() else EMPTY_LIST}\n\n"
        f"{output_format}"
    )


# --- positive knowledge -------------------------------------------------------------------------------
EK_FORMAT = (
    "TRIGGER: when this knowledge applies. STEPS: what to do. WORKED EXAMPLE: a short example. "
    "PITFALL: a mistake to avoid."
)


def format_experimental_knowledge(items: Sequence[KnowledgeItem]) -> str:
    """Items oldest first, numbered as the model must refer to them."""
    if not items:
        return EMPTY_LIST
    return "\n\n".join(f"**EK {number}**\n{item['text'].strip()}" for number, item in enumerate(items, start=1))


def positive_rollout(
    problem: str, iteration: int, reference: str | None, items: Sequence[KnowledgeItem], answer_type: AnswerType
) -> str:
    if iteration == 0:
        return (
            f"{problem}\n\n{GUIDELINE}\n\n"
            "## Output Format\n"
            "After solving, write your final response in exactly this format:\n"
            "[Novel Knowledge to Add to the List]: One piece of experimental knowledge you learned while solving "
            f"that would help on this problem, written as {EK_FORMAT}\n"
            f"{summary_line()}\n"
            f"{answer_line(answer_type)}"
        )
    return (
        "## Problem\n"
        f"{problem}\n\n"
        "## Instruction\n"
        "First solve the problem without the Experimental Knowledge List. Then solve it again using the list "
        "and the Reference Solution (the summary of the latest attempt; it may contain mistakes), and decide "
        "whether to add one new item to the list and whether to drop the least useful one.\n\n"
        "## Reference Solution\n"
        f"{reference.strip() if reference and reference.strip() else NO_REFERENCE}\n\n"
        "## Experimental Knowledge List\n"
        f"{format_experimental_knowledge(items)}\n\n"
        "## Output Format\n"
        "After solving, write your final response in exactly this format:\n"
        "[Solution without EK]: Your solution and answer without the list.\n"
        "[Adding?]: Yes or No.\n"
        f"[Novel Knowledge to Add to the List]: The new item, written as {EK_FORMAT}\n"
        "[Reason to make this addition]: Why it helps.\n"
        "[Dropping?]: Yes or No.\n"
        '[Least Useful to Drop]: "Experimental Knowledge N" for the item to drop.\n'
        "[Why that knowledge should be dropped?]: Why.\n"
        f"{summary_line()}\n"
        f"{answer_line(answer_type)}"
    )


# --- Markovian ----------------------------------------------------------------------------------------
KEEP_THINKING = "Wait, just keep thinking."


def markovian_user(problem: str) -> str:
    return f"{problem}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}."


def markovian_prefix(tail: str) -> str:
    """The assistant message a continuation starts from: the kept tail of the trace, then the nudge."""
    return f"{tail.rstrip()}\n\n{KEEP_THINKING}" if tail.strip() else KEEP_THINKING
