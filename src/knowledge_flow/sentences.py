"""Sentence-aware trimming with an offline rule-based segmenter (pysbd; nothing is downloaded)."""

from __future__ import annotations

import functools
import re

from knowledge_flow.knowledge import count_tokens

_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)
#: Only this much text after the cut is segmented: enough to find the first sentence boundary.
_WINDOW_CHARS = 6000


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


def tail_sentences(text: str, budget_tokens: int) -> str:
    """The longest tail of `text` that fits `budget_tokens` and starts at a sentence boundary.

    The text is cut at the budget, then the partial sentence at the start of the cut is dropped. When no
    boundary is found near the cut (one huge sentence), the cut text is returned as it is.
    """
    if budget_tokens <= 0:
        return ""
    if count_tokens(text) <= budget_tokens:
        return text.strip()
    starts = [m.start() for m in _TOKEN.finditer(text)]
    tail = text[starts[len(starts) - budget_tokens] :]
    before = text[: len(text) - len(tail)].rstrip()
    if before.endswith((".", "!", "?", "\n")) or text[len(text) - len(tail) - 1 : len(text) - len(tail)] == "\n":
        return tail.strip()
    head = sentences(tail[:_WINDOW_CHARS])
    if len(head) < 2:
        return tail.strip()
    return tail[len(head[0]) :].strip()
