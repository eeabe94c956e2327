from __future__ import annotations

import pytest

from knowledge_flow.text.answers import equivalent, normalize


def test_integer_equivalence() -> None:
    assert equivalent("70", "070", "integer")
    assert equivalent("1,234", "1234", "integer")
    assert not equivalent("70", "71", "integer")
    assert not equivalent(None, "1", "integer")
    assert not equivalent(None, None, "integer")


@pytest.mark.parametrize(
    ("a", "b"),
    [("\\frac{1}{2}", "0.5"), ("\\sqrt{2}/2", "\\frac{\\sqrt2}{2}"), ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}")],
)
def test_latex_equivalence_through_math_verify(a: str, b: str) -> None:
    assert equivalent(a, b, "latex")


def test_latex_difference() -> None:
    assert not equivalent("\\frac{1}{2}", "\\frac{1}{3}", "latex")


def test_normalize() -> None:
    assert normalize(" 12 ", "integer") == "12"
    assert normalize("", "integer") is None
    assert normalize("x+1", "latex") == "x+1"
