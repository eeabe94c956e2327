"""Counting tokens: the served model's tokenizer when the endpoint has one, else an offline estimate."""

from __future__ import annotations

import re
from typing import Protocol

_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def estimate_tokens(text: str) -> int:
    """An offline estimate of the tokens a BPE tokenizer uses for `text` (words and punctuation marks).

    Used only where the endpoint cannot count (no tokenize endpoint); runs record which one they used.
    """
    return len(_TOKEN.findall(text))


def token_starts(text: str) -> list[int]:
    """Where each estimated token starts (see `estimate_tokens`)."""
    return [m.start() for m in _TOKEN.finditer(text)]


class TokenCounter(Protocol):
    """Counts tokens of plain text (no special tokens added)."""

    @property
    def exact(self) -> bool:
        """Whether the counts come from the served model's tokenizer."""
        ...

    def count(self, text: str) -> int: ...


class EstimatedTokens:
    """The offline estimate, for servers without a tokenize endpoint."""

    exact = False

    def count(self, text: str) -> int:
        return estimate_tokens(text)


ESTIMATE = EstimatedTokens()
