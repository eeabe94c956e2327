from __future__ import annotations

from knowledge_flow import prompts
from knowledge_flow.state import KnowledgeItem

PROBLEM = "What is 2 + 3?"


def test_first_rollout_exact_text() -> None:
    assert prompts.first_rollout(PROBLEM, "integer") == (
        "What is 2 + 3?\n\n"
        "Let's solve this problem. Be thorough.\n\n"
        "## Output Format\n"
        "After solving, write your final response in exactly this format:\n"
        "[Summary]: A detailed step-by-step summary of your solution: the key steps and results, where it may "
        "have gone wrong, and the final answer.\n"
        "[Answer]: Therefore, final answer is \\boxed{<integer>}."
    )


def test_later_rollout_exact_text() -> None:
    items = [
        KnowledgeItem(wrong_answer="6", text="The Answer cannot be 6, because 2+3 is not 6.", iteration=2),
        KnowledgeItem(wrong_answer="4", text="The Answer cannot be 4,\nbecause  x.", iteration=1),
    ]
    text = prompts.later_rollout(PROBLEM, "  Add them: 5.  ", items, "integer")
    assert text == (
        "## Problem\nWhat is 2 + 3?\n\n"
        "## Instruction\n"
        "Solve the problem from scratch first, thinking independently. Then check your solution against the "
        "Wrong Answer List and the Reference Solution below. Every answer in the Wrong Answer List has been "
        "shown to be wrong, with the reason: never give one of them as your final answer. The Reference "
        "Solution is the summary of the latest attempt; it may contain mistakes.\n\n"
        "## Reference Solution\nAdd them: 5.\n\n"
        "## Wrong Answer List\n"
        "1. Wrong answer: 6\n   Why it is wrong: The Answer cannot be 6, because 2+3 is not 6.\n"
        "2. Wrong answer: 4\n   Why it is wrong: The Answer cannot be 4, because x.\n\n"
        "## Output Format\n"
        "After solving, write your final response in exactly this format:\n"
        "[Error Report]: If your final answer differs from the answer of the Reference Solution, explain why the "
        'reference answer is wrong. Start with "The Answer cannot be <integer>, because ..." (using the reference '
        'answer) and end with "The correct approach is ...". Do not state your new answer in the Error Report. '
        'If your final answer is the same as the reference answer, write "N/A".\n'
        "[Summary]: A detailed step-by-step summary of your solution: the key steps and results, where it may "
        "have gone wrong, and the final answer.\n"
        "[Answer]: Therefore, final answer is \\boxed{<integer>}."
    )


def test_later_rollout_without_reference_or_list() -> None:
    text = prompts.later_rollout(PROBLEM, None, [], "integer")
    assert "## Reference Solution\nNo reference solution is available.\n\n" in text
    assert "## Wrong Answer List\nN/A\n\n" in text


def test_latex_answer_slot() -> None:
    assert prompts.answer_line("latex") == "[Answer]: Therefore, final answer is \\boxed{<answer in LaTeX>}."
