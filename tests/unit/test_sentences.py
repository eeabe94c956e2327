from __future__ import annotations

from knowledge_flow.text.sentences import sentences, tail_sentences
from knowledge_flow.text.tokens import estimate_tokens as count_tokens


def test_sentences_round_trip() -> None:
    text = "Avoid 42. It fails because x = 3.5 is wrong. Dr. Smith agrees! Why? Because."
    parts = sentences(text)
    assert "".join(parts) == text
    assert parts[0] == "Avoid 42. "
    assert any(p.startswith("Dr. Smith agrees") for p in parts)


def test_tail_keeps_whole_sentences_within_budget() -> None:
    text = " ".join(f"Sentence number {n} is here." for n in range(50))
    tail = tail_sentences(text, 40)
    assert count_tokens(tail) <= 40
    assert tail.startswith("Sentence number") and tail.endswith("is here.")
    assert text.endswith(tail)


def test_tail_short_text_is_kept_whole() -> None:
    assert tail_sentences("  One. Two.  ", 100) == "One. Two."
    assert tail_sentences("anything", 0) == ""


def test_tail_cut_on_a_boundary_keeps_that_sentence() -> None:
    text = "Alpha beta gamma. Delta epsilon."
    assert tail_sentences(text, 3) == "Delta epsilon."


def test_tail_without_boundary_falls_back_to_the_cut() -> None:
    text = "word " * 100
    tail = tail_sentences(text, 10)
    assert count_tokens(tail) == 10


class CharTokens:
    """A served tokenizer stand-in: one token per character (counts differ a lot from the estimate)."""

    exact = True

    def __init__(self) -> None:
        self.calls = 0

    def count(self, text: str) -> int:
        self.calls += 1
        return len(text)


def test_tail_fits_the_served_count_with_few_counts() -> None:
    text = " ".join(f"Sentence number {n} is here." for n in range(400))
    counter = CharTokens()
    tail = tail_sentences(text, 300, counter)
    assert len(tail) <= 300 and len(tail) > 250  # near the budget, in served tokens, not estimated ones
    assert tail.startswith("Sentence number") and text.endswith(tail)
    assert counter.calls <= 8  # a few exact counts, never one request per sentence
