"""R3: the parsers never crash and stay fast on hostile model output (property-based)."""

from __future__ import annotations

import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from knowledge_flow.prompts import load_prompt_set
from knowledge_flow.strategies import STRATEGIES
from knowledge_flow.text.boxed import boxed_contents
from knowledge_flow.text.parsing import find_sections, parse_rollout, split_thinking

PIECES = st.sampled_from(
    [
        "\\boxed{",
        "}",
        "{",
        "\\boxed",
        "\\fbox{",
        "[Summary]:",
        "[Answer]:",
        "[Error Report]:",
        "### Summary",
        "**Summary**",
        "</think>",
        "<think>",
        "N/A",
        "\\frac{1}{2}",
        "42",
        "-7",
        "1,234",
        "\n",
        " ",
        "[",
        "]",
        ":",
        "\\",
        "$",
        "é",
        "\u202e",
        "\x00",
        "\x1b[31m",
        "Things to Avoid:",
        "[Adding?]:",
        "EK 3",
    ]
)
HOSTILE = st.one_of(st.text(max_size=3000), st.lists(PIECES, max_size=400).map("".join))
SECTION_SETS = [
    tuple(s.section_names(load_prompt_set(name).table(s.spec).rules))
    for s in STRATEGIES.values()
    for name in ("kf-instruct", "kf-gpt-oss")
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=HOSTILE,
    reasoning=st.one_of(st.none(), st.text(max_size=200)),
    kind=st.sampled_from(["integer", "latex", "text"]),
    sections=st.sampled_from(SECTION_SETS),
)
def test_parse_never_crashes(text: str, reasoning: str | None, kind: str, sections: tuple[str, ...]) -> None:
    parsed = parse_rollout(text, reasoning, kind, sections)  # type: ignore[arg-type]
    assert parsed.answer is None or isinstance(parsed.answer, str)
    assert parsed.summary is None or isinstance(parsed.summary, str)
    _thinking, final = split_thinking(text, reasoning)
    assert "</think>" not in final
    for content in boxed_contents(final):
        assert isinstance(content, str)


@settings(max_examples=50, deadline=None)
@given(repeat=st.integers(min_value=1000, max_value=5000), piece=PIECES)
def test_repeated_pieces_are_linear(repeat: int, piece: str) -> None:
    text = piece * repeat
    started = time.monotonic()
    parse_rollout(text, None, "integer")
    find_sections(text)
    assert time.monotonic() - started < 3.0


def test_very_long_outputs_are_bounded() -> None:
    cases = [
        "\\boxed{1}" * 100_000,  # thousands of boxes
        "{" * 200_000 + "\\boxed{" * 1000,  # unbalanced braces
        "[Summary]: x\n" * 50_000 + "[Answer]: \\boxed{5}",  # repeated headers
        ("word " * 200_000) + "\\boxed{7}",  # 1 MB of text
        "".join(chr(c) for c in range(0, 0x3000)) * 20,  # unicode and control characters
    ]
    for text in cases:
        started = time.monotonic()
        parsed = parse_rollout(text, None, "integer")
        assert time.monotonic() - started < 10.0
        assert parsed.answer is None or isinstance(parsed.answer, str)
    assert parse_rollout(cases[0], None, "integer").answer == "1"
    assert parse_rollout(cases[2], None, "integer").answer == "5"
    assert parse_rollout(cases[3], None, "integer").answer == "7"
