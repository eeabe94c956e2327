"""Stop policies and label-free final-answer rules.

Stop policies: ``fixed`` runs the whole iteration budget (the paper's setting); ``stable:K`` stops once the
last K iterations gave the same answer and wrote no error report.
Final-answer rules: ``last`` (the last iteration's answer) and ``majority:W`` (the most frequent answer among
the last W iterations, ``all`` for every iteration; ties go to the answer given most recently).
"""

from __future__ import annotations

from collections.abc import Sequence

from knowledge_flow.answers import normalize
from knowledge_flow.records import AnswerType


def parse_stop_policy(policy: str) -> int | None:
    """None for ``fixed``, K for ``stable:K``."""
    if policy == "fixed":
        return None
    name, _, value = policy.partition(":")
    if name == "stable" and value.isdigit() and int(value) >= 1:
        return int(value)
    raise ValueError(f"stop policy must be 'fixed' or 'stable:K' with K >= 1, got {policy!r}")


def parse_final_answer_rule(rule: str) -> int | None:
    """0 for ``last``, W for ``majority:W``, None for ``majority:all``."""
    if rule == "last":
        return 0
    name, _, value = rule.partition(":")
    if name == "majority" and value == "all":
        return None
    if name == "majority" and value.isdigit() and int(value) >= 1:
        return int(value)
    raise ValueError(f"final answer rule must be 'last' or 'majority:W' (W >= 1 or 'all'), got {rule!r}")


def should_stop(
    policy: str, iterations: int, answers: Sequence[str | None], reported: Sequence[bool], answer_type: AnswerType
) -> bool:
    if len(answers) >= iterations:
        return True
    k = parse_stop_policy(policy)
    if k is None or len(answers) < k:
        return False
    last = [normalize(a, answer_type) for a in answers[-k:]]
    return last[0] is not None and all(a == last[0] for a in last) and not any(reported[-k:])


def final_answer(rule: str, answers: Sequence[str | None], answer_type: AnswerType) -> str | None:
    window = parse_final_answer_rule(rule)
    if window == 0:
        return answers[-1] if answers else None
    considered = list(answers if window is None else answers[-window:])
    counts: dict[str, int] = {}
    latest: dict[str, int] = {}
    original: dict[str, str] = {}
    for position, answer in enumerate(considered):
        key = normalize(answer, answer_type)
        if key is None or answer is None:
            continue
        counts[key] = counts.get(key, 0) + 1
        latest[key] = position
        original[key] = answer
    if not counts:
        return None
    best = max(counts, key=lambda key: (counts[key], latest[key]))
    return original[best]
