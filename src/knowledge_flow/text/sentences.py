"""Sentence-aware trimming with an offline rule-based segmenter (pysbd; nothing is downloaded)."""

from __future__ import annotations

import functools

from knowledge_flow.text.tokens import ESTIMATE, TokenCounter, estimate_tokens, token_starts

#: Only this much text after the cut is segmented: enough to find the first sentence boundary.
_WINDOW_CHARS = 6000
#: Attempts to find the longest tail that fits when the counts come from the served tokenizer.
_ROUNDS = 6


@functools.lru_cache(maxsize=1)
def _segmenter() -> object:
    import pysbd

    return pysbd.Segmenter(language="en", clean=False)


def sentences(text: str) -> list[str]:
    """Split `text` into sentences (each keeps its trailing whitespace, so they concatenate back)."""
    if not text:
        return []
    segmented: list[str] = _segmenter().segment(text)  # type: ignore[attr-defined]
    return segmented


def _cut(text: str, estimated_budget: int) -> str:
    """The tail of `text` within `estimated_budget` estimated tokens, starting at a sentence boundary.

    The text is cut at the budget, then the partial sentence at the start of the cut is dropped. When no
    boundary is found near the cut (one huge sentence), the cut text is returned as it is.
    """
    starts = token_starts(text)
    if estimated_budget <= 0:
        return ""
    if len(starts) <= estimated_budget:
        return text.strip()
    tail = text[starts[len(starts) - estimated_budget] :]
    before = text[: len(text) - len(tail)].rstrip()
    if before.endswith((".", "!", "?", "\n")) or text[len(text) - len(tail) - 1 : len(text) - len(tail)] == "\n":
        return tail.strip()
    head = sentences(tail[:_WINDOW_CHARS])
    if len(head) < 2:
        return tail.strip()
    return tail[len(head[0]) :].strip()


def tail_sentences(text: str, budget_tokens: int, counter: TokenCounter = ESTIMATE) -> str:
    """The longest tail of `text` that fits `budget_tokens` (counted by `counter`) and starts at a sentence
    boundary (the original scripts keep the last whole sentences that fit).

    With the served tokenizer the cut is found from the offline estimate, then corrected with a few exact
    counts of the candidate tail (never one request per sentence).
    """
    if budget_tokens <= 0:
        return ""
    if counter.count(text) <= budget_tokens:
        return text.strip()
    target, best = budget_tokens, ""
    estimated_total = estimate_tokens(text)
    for _ in range(_ROUNDS):
        tail = _cut(text, target)
        used = counter.count(tail) if tail else 0
        if used <= budget_tokens:
            best = tail if len(tail) > len(best) else best
            if not counter.exact or used >= 0.95 * budget_tokens or target >= estimated_total:
                break
            target = min(estimated_total, max(target + 1, int(target * budget_tokens / max(used, 1))))
        else:
            target = max(0, min(target - 1, int(target * budget_tokens / used * 0.97)))
    return best
