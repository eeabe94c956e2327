"""Answer normalisation and equivalence.

Integer problems compare integers. LaTeX and free-form answers go through math-verify, which parses both
sides into sympy expressions and compares them (with its own timeouts); never ad-hoc sympy on raw text.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from knowledge_flow.records import AnswerType
from knowledge_flow.text.boxed import UNICODE_MINUS, normalize_integer


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


#: Seconds a comparison may take; answers longer than `MAX_SYMBOLIC_CHARS` are compared as text only.
TIMEOUT_S = 5
MAX_SYMBOLIC_CHARS = 400
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _compare(a: str, b: str, timeout: int | None) -> bool:
    from math_verify import parse, verify

    gold = parse(f"${a}$" if "$" not in a else a, parsing_timeout=timeout)
    pred = parse(f"${b}$" if "$" not in b else b, parsing_timeout=timeout)
    if not gold or not pred:
        return False
    return bool(verify(gold, pred, timeout_seconds=timeout))


def _math_verify_equal(a: str, b: str) -> bool:
    """math-verify's comparison with a working time limit: its own (signals) in the main thread; elsewhere a
    comparison thread waited for at most `TIMEOUT_S` (a comparison past it counts as different)."""
    if threading.current_thread() is threading.main_thread():
        return _compare(a, b, TIMEOUT_S)
    import math_verify.grader
    import math_verify.parser

    # The limit is enforced here; math-verify's warning that it has none in this thread does not apply.
    math_verify.grader.TIMEOUT_WARNING_SHOWN = math_verify.parser.TIMEOUT_WARNING_SHOWN = True
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="kflow-math-verify")
    try:
        return _POOL.submit(_compare, a, b, None).result(timeout=TIMEOUT_S)
    except FutureTimeout:
        return False


def equivalent(a: str | None, b: str | None, answer_type: AnswerType) -> bool:
    """Whether two answers are the same. None is never equal to anything."""
    na, nb = normalize(a, answer_type), normalize(b, answer_type)
    if na is None or nb is None:
        return False
    if na == nb:
        return True
    if answer_type == "integer" or max(len(na), len(nb)) > MAX_SYMBOLIC_CHARS:
        return False
    try:
        return _math_verify_equal(na, nb)
    except Exception:  # math-verify raises on exotic input (and on its own timeouts)
        return False
