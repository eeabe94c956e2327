from __future__ import annotations

import time

import pytest

from knowledge_flow.text.boxed import boxed_contents, last_boxed, normalize_integer
from knowledge_flow.text.parsing import (
    find_sections,
    is_na,
    parse_rollout,
    read_answer,
    split_thinking,
    summary_fallback,
)

WELL_FORMED = (
    "[Error Report]: The Answer cannot be 5, because the count skipped a case. The correct approach is to "
    "enumerate both cases.\n"
    "[Summary]: Count both cases: 3 + 4 = 7.\n"
    "[Answer]: Therefore, final answer is \\boxed{7}."
)


def test_well_formed_rollout() -> None:
    parsed = parse_rollout(WELL_FORMED, None, "integer")
    assert parsed.answer == "7"
    assert parsed.summary == "Count both cases: 3 + 4 = 7."
    assert parsed.error_report is not None and parsed.error_report.startswith("The Answer cannot be 5")
    assert parsed.error_report.endswith("enumerate both cases.")
    assert parsed.thinking == ""


@pytest.mark.parametrize(
    "header",
    [
        "[Summary]:",
        "[Summary]",
        "### Summary:",
        "## Summary",
        "**Summary**",
        "**Summary:**",
        "**[Summary]:**",
        "Summary:",
        "SUMMARY:",
        "> **Summary**:",
    ],
)
def test_summary_header_variants(header: str) -> None:
    text = f"Some work.\n{header} The key steps.\n[Answer]: \\boxed{{12}}"
    assert find_sections(text)["Summary"] == "The key steps."
    assert parse_rollout(text, None, "integer").summary == "The key steps."


def test_words_in_running_text_are_not_headers() -> None:
    text = "In summary, the answer is clear.\nThe summary: is not a header mid-line. \\boxed{3}"
    assert find_sections(text) == {}


def test_bracketed_header_mid_line_counts() -> None:
    text = "All done. [Summary]: short. [Answer]: \\boxed{4}"
    sections = find_sections(text)
    assert sections["Summary"] == "short."
    assert sections["Answer"] == "\\boxed{4}"


def test_missing_summary_header_uses_text_up_to_answer() -> None:
    text = "We add 2 and 2 to get 4.\nThat is all.\n[Answer]: Therefore, final answer is \\boxed{4}."
    parsed = parse_rollout(text, None, "integer")
    assert parsed.summary == "We add 2 and 2 to get 4.\nThat is all."
    assert parsed.answer == "4"


def test_summary_fallback_without_any_header_is_whole_text() -> None:
    assert summary_fallback("just text 5") == "just text 5"
    assert summary_fallback("") is None


def test_summary_fallback_drops_error_report_but_keeps_text_after_na() -> None:
    text = "[Error Report]: N/A\nWe did stuff.\n[Answer]: \\boxed{42}"
    parsed = parse_rollout(text, None, "integer")
    assert parsed.error_report is None
    assert parsed.summary == "We did stuff."
    text2 = "[Error Report]: The Answer cannot be 1, because x. The correct approach is y.\n[Answer]: \\boxed{2}"
    assert parse_rollout(text2, None, "integer").summary is None


def test_repeated_headers_last_non_empty_wins() -> None:
    text = "[Summary]: first\n[Answer]: \\boxed{1}\n[Summary]: second\n[Summary]:\n[Answer]: \\boxed{2}"
    parsed = parse_rollout(text, None, "integer")
    assert parsed.summary == "second"
    assert parsed.answer == "2"


def test_several_boxed_last_wins() -> None:
    assert read_answer("\\boxed{1} then \\boxed{2} and finally \\boxed{3}", "integer") == "3"


def test_nested_braces() -> None:
    assert last_boxed("\\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert last_boxed("x \\boxed{\\sqrt{\\frac{a}{b^{2}}}} y") == "\\sqrt{\\frac{a}{b^{2}}}"
    assert read_answer("\\boxed{\\frac{\\sqrt{2}}{2}}", "latex") == "\\frac{\\sqrt{2}}{2}"


def test_unbalanced_boxed_is_skipped() -> None:
    assert last_boxed("\\boxed{5} and then \\boxed{6") == "5"
    assert boxed_contents("\\boxed{") == []
    assert read_answer("\\boxed{", "latex") is None


def test_escaped_braces_do_not_count() -> None:
    assert last_boxed("\\boxed{\\{1,2\\}}") == "\\{1,2\\}"


def test_fbox_and_empty_boxed() -> None:
    assert read_answer("\\fbox{8}", "integer") == "8"
    assert read_answer("\\boxed{} and 9 is it", "integer") == "9"


def test_think_is_dropped_before_parsing() -> None:
    content = "<think>maybe \\boxed{1}\n[Summary]: wrong</think>\n[Summary]: right\n[Answer]: \\boxed{2}"
    parsed = parse_rollout(content, None, "integer")
    assert parsed.answer == "2"
    assert parsed.summary == "right"
    assert parsed.thinking == "maybe \\boxed{1}\n[Summary]: wrong"


def test_last_think_end_wins() -> None:
    thinking, final = split_thinking("a</think>b</think>c")
    assert final == "c"
    assert thinking == "a</think>b"


def test_reasoning_field_is_the_thinking() -> None:
    thinking, final = split_thinking("[Answer]: \\boxed{3}", "long reasoning")
    assert thinking == "long reasoning"
    assert final == "[Answer]: \\boxed{3}"


def test_empty_and_none_output() -> None:
    for content in ("", None, "   \n"):
        parsed = parse_rollout(content, None, "integer")
        assert parsed.answer is None
        assert parsed.summary is None
        assert parsed.error_report is None


def test_integer_fallback_to_last_integer() -> None:
    assert read_answer("She makes 9 + 9 = 18 dollars.", "integer") == "18"
    assert read_answer("The total is 1,234 eggs.", "integer") == "1234"
    assert read_answer("[Answer]: 42\nCheck: 3 steps", "integer") == "42"
    assert read_answer("no numbers here", "integer") is None
    assert read_answer("no box here 5", "latex") is None


@pytest.mark.parametrize(
    ("boxed", "expected"),
    [
        ("70", "70"),
        ("$70$", "70"),
        ("\\text{70}", "70"),
        ("1,234", "1234"),
        ("70.0", "70"),
        ("-3", "-3"),
        ("x = 18", "18"),
        ("18 \\text{ dollars}", "18"),
        ("\\$18", "18"),
        ("\\frac{1}{2}", "\\frac{1}{2}"),
        ("2^{10}", "2^{10}"),
        ("+7", "7"),
    ],
)
def test_integer_normalisation_of_boxed(boxed: str, expected: str) -> None:
    assert read_answer(f"[Answer]: \\boxed{{{boxed}}}", "integer") == expected


def test_normalize_integer_rejects_non_integers() -> None:
    assert normalize_integer("1.5") is None
    assert normalize_integer("abc") is None
    assert normalize_integer("007") == "7"


@pytest.mark.parametrize("text", ["N/A", "n/a.", "NA", "None", " **N/A** ", "N/A\nmore text", "", None])
def test_na_variants(text: str | None) -> None:
    assert is_na(text)


def test_real_report_is_not_na() -> None:
    assert not is_na("The Answer cannot be 5, because ...")


def test_hostile_input_is_linear_time() -> None:
    huge = "\\boxed{" * 20000 + "[Summary]" * 5000 + "}" * 10 + "</think>" * 1000
    started = time.monotonic()
    parse_rollout(huge, None, "integer")
    parse_rollout("\\boxed{1}" * 50000, None, "integer")
    assert time.monotonic() - started < 5.0


def test_strategy_sections_with_question_marks() -> None:
    text = (
        "[Solution without EK]: 5\n[Adding?]: Yes\n[Novel Knowledge to Add to the List]: TRIGGER: a. STEPS: b.\n"
        "[Dropping?]: No\n[Least Useful to Drop]: N/A\n[Summary]: s\n[Answer]: \\boxed{5}"
    )
    names = (
        "Solution without EK",
        "Adding?",
        "Novel Knowledge to Add to the List",
        "Dropping?",
        "Least Useful to Drop",
    )
    parsed = parse_rollout(text, None, "integer", names)
    assert parsed.sections["Adding?"] == "Yes"
    assert parsed.sections["Novel Knowledge to Add to the List"] == "TRIGGER: a. STEPS: b."
    assert parsed.sections["Dropping?"] == "No"
    assert parsed.summary == "s" and parsed.answer == "5"


def test_things_to_avoid_section() -> None:
    text = "**Things to Avoid:** 4 is wrong.\n### Summary:\nok\n[Answer]: \\boxed{8}"
    parsed = parse_rollout(text, None, "integer", ("Things to Avoid",))
    assert parsed.sections["Things to Avoid"] == "4 is wrong."
