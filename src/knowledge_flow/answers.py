"""Answer normalisation and equivalence.

Integer problems compare integers. LaTeX and free-form answers go through math-verify, which parses both
sides into sympy expressions and compares them (with its own timeouts); never ad-hoc sympy on raw text.
"""

from __future__ import annotations

import threading

from knowledge_flow.parsing import UNICODE_MINUS, normalize_integer
from knowledge_flow.state import AnswerType


def normalize(answer: str | None, answer_type: AnswerType) -> str | None:
    if answer is None:
        return None
    text = answer.strip().replace(UNICODE_MINUS, "-")
    if not text:
        return None
    if answer_type == "integer":
        return normalize_integer(text) or text
    text = text.replace("\\$", "")  # an escaped dollar is a currency sign, not part of the value
    if text.startswith("$") and text.count("$") == 1:
        text = text[1:]
    return text.strip() or None


def _math_verify_equal(a: str, b: str) -> bool:
    from math_verify import parse, verify

    # math-verify's timeouts use signals, which only work in the main thread.
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    gold = parse(f"${a}$" if "$" not in a else a, parsing_timeout=timeout)
    pred = parse(f"${b}$" if "$" not in b else b, parsing_timeout=timeout)
    if not gold or not pred:
        return False
    return bool(verify(gold, pred, timeout_seconds=timeout))


def equivalent(a: str | None, b: str | None, answer_type: AnswerType) -> bool:
    """Whether two answers are the same. None is never equal to anything."""
    na, nb = normalize(a, answer_type), normalize(b, answer_type)
    if na is None or nb is None:
        return False
    if na == nb:
        return True
    if answer_type == "integer":
        return False
    try:
        return _math_verify_equal(na, nb)
    except Exception:  # math-verify raises on exotic input (and on its own timeouts)
        return False
