"""A scripted run whose knowledge evolution is known exactly."""

from __future__ import annotations

from knowledge_flow.state import KnowledgeItem
from knowledge_flow.strategies.base import ITEM_OVERHEAD
from knowledge_flow.text.tokens import estimate_tokens
from tests.support import legacy_prompts as prompts
from tests.support.scripted_server import kf_output

#: The script follows the paper's rules: kf-instruct without its guard.
PAPER_SET = "kf-instruct-paper"

PROBLEM = "How many positive divisors does 36 have?"


def report(wrong: str, why: str) -> str:
    return f"The Answer cannot be {wrong}, because {why}. The correct approach is to recount."


#: Rollout k's output.
SCRIPT = [
    kf_output("5", "S0: counted 5 divisors."),
    kf_output("7", "S1: counted 7.", report("5", "R1")),
    kf_output("7", "S2: counted 7 again.", "N/A"),
    kf_output("5", "S3: back to 5.", report("7", "R3")),
    kf_output("9", "S4: 36 = 2^2 3^2 so (2+1)(2+1) = 9.", report("5", "R4")),
    kf_output("5", "S5: 5 once more.", report("9", "R5")),
    kf_output("7", "S6: seven.", report("5", "R6")),
    kf_output("7", "S7: seven, confirmed.", "N/A"),
]
ANSWERS = ["5", "7", "7", "5", "9", "5", "7", "7"]


def item(wrong: str, why: str, iteration: int) -> KnowledgeItem:
    """An item as the record holds it: the report section's raw text (from just after ``[Error Report]``) and
    its token cost (the scripted server has no tokenize endpoint: the offline estimate)."""
    text = ": " + report(wrong, why)
    return KnowledgeItem(
        wrong_answer=wrong, text=text, iteration=iteration, tokens=estimate_tokens(text) + ITEM_OVERHEAD
    )


def shown(item: KnowledgeItem) -> KnowledgeItem:
    """The item as the legacy prompt functions took it (the clean report text)."""
    return KnowledgeItem(
        wrong_answer=item["wrong_answer"], text=item["text"].removeprefix(": "), iteration=item["iteration"]
    )


R1, R3, R4, R5, R6 = item("5", "R1", 1), item("7", "R3", 3), item("5", "R4", 4), item("9", "R5", 5), item("5", "R6", 6)

#: The prompt each rollout must receive. Rollout 7 no longer shows R1: answer 5 already has two newer items.
EXPECTED_PROMPTS = [
    prompts.first_rollout(PROBLEM, "integer"),
    prompts.later_rollout(PROBLEM, "S0: counted 5 divisors.", [], "integer"),
    prompts.later_rollout(PROBLEM, "S1: counted 7.", [shown(R1)], "integer"),
    prompts.later_rollout(PROBLEM, "S2: counted 7 again.", [shown(R1)], "integer"),
    prompts.later_rollout(PROBLEM, "S3: back to 5.", [shown(R3), shown(R1)], "integer"),
    prompts.later_rollout(PROBLEM, "S4: 36 = 2^2 3^2 so (2+1)(2+1) = 9.", [shown(i) for i in (R4, R3, R1)], "integer"),
    prompts.later_rollout(PROBLEM, "S5: 5 once more.", [shown(i) for i in (R5, R4, R3, R1)], "integer"),
    prompts.later_rollout(PROBLEM, "S6: seven.", [shown(i) for i in (R6, R5, R4, R3)], "integer"),
]
RECORD = [R1, R3, R4, R5, R6]
VISIBLE_AT_END = [R6, R5, R4, R3]
