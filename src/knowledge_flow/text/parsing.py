"""Model output -> thinking, final text, sections and answer.

Every function here is total: any text (empty, huge, unbalanced braces, control characters) gives a
result in time linear in its length, never an exception.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from knowledge_flow.records import AnswerType
from knowledge_flow.text.boxed import TEXT_WRAPPER, integers, last_boxed, last_integer, normalize_integer
from knowledge_flow.text.safe import has_control

THINK_END = "</think>"
THINK_START = "<think>"

REPORT = "Error Report"
SUMMARY = "Summary"
ANSWER = "Answer"
#: Section names the parsers know. A section runs from its header to the next known header.
KNOWN_SECTIONS: tuple[str, ...] = (REPORT, SUMMARY, ANSWER)

_NA = re.compile(r"^\s*(?:\*\*)?\s*(?:n\s*/\s*a|none|na|not applicable)\s*\.?\s*(?:\*\*)?\s*$", re.IGNORECASE)
_NOT_AN_INTEGER = re.compile(r"\\frac|\\sqrt|\\pi|\^|/|\\cdot|\\times")


@dataclass(frozen=True)
class ParsedRollout:
    """What one rollout said, as the graph needs it.

    `sections` hold each section's text without its header and colon; `raw` holds the section's raw text,
    from just after the header (its closing bracket, for ``[Name]`` headers) to the next header, stripped:
    a leading ``:`` is still there. Prompt sets see the raw texts (see `knowledge_flow.prompts`).
    """

    thinking: str
    final: str
    answer: str | None
    summary: str | None
    """The summary section's text (or the fallback, see `summary_fallback`)."""
    summary_raw: str | None
    """The summary section's raw text (or the fallback): what a prompt set shows as the reference."""
    error_report: str | None
    """The clean text of the error report; None when absent or N/A."""
    sections: dict[str, str] = field(default_factory=dict)
    raw: dict[str, str] = field(default_factory=dict)
    parsed_from: str = "content"
    """``content``, or ``reasoning`` when the final text was empty and the reasoning was parsed instead (a
    thinking block that was never closed: the whole output is in the reasoning field)."""

    def after_header(self, name: str) -> str | None:
        """Everything after the last `name` header of the final text (raw, stripped), or None."""
        return text_after_header(self.final, name)


def split_thinking(content: str | None, reasoning: str | None = None) -> tuple[str, str]:
    """Return (thinking, final text).

    The thinking is the server's separate reasoning field when it sent one; otherwise the text up to the
    last ``</think>`` of the content. The final text is what follows the last ``</think>`` (all the content
    when there is none).
    """
    text = content or ""
    cut = text.rfind(THINK_END)
    if cut < 0:
        return (reasoning or "").strip(), text.strip()
    inline = text[:cut].strip()
    if inline.startswith(THINK_START):
        inline = inline[len(THINK_START) :]
    return (reasoning or inline).strip(), text[cut + len(THINK_END) :].strip()


def final_text(content: str | None, reasoning: str | None = None) -> str:
    """The text a reply is read from: its final text (after the reasoning), or its reasoning when the final text
    is empty (a thinking block that never closed)."""
    thinking, final = split_thinking(content, reasoning)
    return final or thinking


@functools.lru_cache(maxsize=64)
def _name_pattern(names: frozenset[str]) -> re.Pattern[str]:
    """Finds section names; the decoration around a name is checked by `_header_at`, never by backtracking."""
    alternatives = "|".join(re.escape(n).replace(r"\ ", r"[ \t]+") for n in sorted(names, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?P<name>{alternatives})(?![\w?])", re.IGNORECASE)


_DECORATION = " \t>#*_["
_MAX_PREFIX = 40


def _skip_blanks(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t":
        i += 1
    return i


def _header_at(text: str, match: re.Match[str]) -> tuple[int, int, int] | None:
    """(header start, raw start, body start) when the name found by `match` is a header, else None.

    The raw text starts right after the name and its closing bracket or bold marker (before any colon);
    the body starts after the colon and decoration.

    A header is "[Name]" anywhere, or a decorated name that starts a line ("### Summary:", "**Summary**",
    "Summary:"). Plain words in running text ("in summary, ...") are not headers. Linear in the text looked
    at: a bounded prefix, then the blanks and marks after the name.
    """
    start, i = match.start(), match.end()
    i = _skip_blanks(text, i)
    closed = i < len(text) and text[i] == "]"
    if closed:
        i = _skip_blanks(text, i + 1)
    raw = i if closed else match.end()
    if text.startswith(("**", "__"), i):
        i = _skip_blanks(text, i + 2)
        raw = raw if closed else i
    colon = i < len(text) and text[i] == ":"
    if colon:
        i = _skip_blanks(text, i + 1)
    if text.startswith(("**", "__"), i):
        i += 2
    line_start = text.rfind("\n", max(0, start - _MAX_PREFIX - 1), start) + 1
    window = text[max(line_start, start - _MAX_PREFIX) : start]
    opened = window.rstrip(" \t").endswith("[")
    if opened and closed:
        bracket = start - (len(window) - len(window.rstrip(" \t"))) - 1
        return (line_start if at_line_start(text, line_start, bracket) else bracket), raw, i
    if start - line_start > _MAX_PREFIX or window.strip(_DECORATION):
        return None
    if colon or any(mark in window for mark in "#*_") or text.startswith(("**", "__"), match.end()):
        return line_start, raw, i
    return None


def at_line_start(text: str, line_start: int, position: int) -> bool:
    return position - line_start <= _MAX_PREFIX and not text[line_start:position].strip(_DECORATION)


@dataclass(frozen=True)
class _Span:
    start: int
    raw: int
    body: int
    end: int
    name: str
    """Lower-case, single-spaced."""


def _spans(text: str, names: Iterable[str] = KNOWN_SECTIONS) -> list[_Span]:
    """Each header with its body, in order; a body runs to the next header."""
    heads: list[tuple[int, int, int, str]] = []
    for match in _name_pattern(frozenset(names)).finditer(text):
        found = _header_at(text, match)
        if found is not None and (not heads or found[0] >= heads[-1][2]):
            heads.append((*found, " ".join(match.group("name").split()).lower()))
    return [
        _Span(start, raw, body, heads[i + 1][0] if i + 1 < len(heads) else len(text), name)
        for i, (start, raw, body, name) in enumerate(heads)
    ]


def sections_of(text: str, names: Iterable[str] = KNOWN_SECTIONS) -> tuple[dict[str, str], dict[str, str]]:
    """(clean, raw) texts of each section named in `names` (keys as given there); the last non-empty
    occurrence wins. Clean texts start after the header's colon; raw texts right after the header."""
    wanted = {n.lower(): n for n in names}
    clean: dict[str, str] = {}
    raw: dict[str, str] = {}
    for span in _spans(text, (*KNOWN_SECTIONS, *wanted.values())):
        body = text[span.body : span.end].strip()
        if span.name in wanted and body:
            clean[wanted[span.name]] = body
            raw[wanted[span.name]] = text[span.raw : span.end].strip()
    return clean, raw


def find_sections(text: str, names: Iterable[str] = KNOWN_SECTIONS) -> dict[str, str]:
    """Map each section name (as given in `names`) to its text; the last non-empty occurrence wins."""
    return sections_of(text, names)[0]


def text_after_header(text: str, name: str) -> str | None:
    """Everything after the last `name` header in `text` (raw: from right after the header), or None."""
    spans = [span for span in _spans(text, (*KNOWN_SECTIONS, name)) if span.name == " ".join(name.split()).lower()]
    return text[spans[-1].raw :].strip() if spans else None


def not_an_answer(boxed: str, answer_type: AnswerType) -> bool:
    """A boxed text that is no answer: N/A and the like; for integer problems, any text without a digit, or
    with escape codes or control characters."""
    if is_na(boxed):
        return True
    return answer_type == "integer" and (not any(ch.isdigit() for ch in boxed) or has_control(boxed))


def read_answer(final: str, answer_type: AnswerType) -> str | None:
    """The last ``\\boxed{}`` of the final text; for integer problems, the last integer as a fallback.

    For integer problems a boxed value is normalised ("1,234" -> "1234"); a boxed expression with exactly
    one integer in it ("x = 18", "18 \\text{ dollars}") gives that integer, any other expression
    ("\\frac{1}{2}") is kept as written. Without a box, the last integer on the first line of the
    ``[Answer]`` section is taken, else the last integer of the final text.
    """
    boxed = last_boxed(final)
    if boxed is not None and not_an_answer(boxed, answer_type):
        return None  # "\\boxed{N/A}": no answer, whatever else the text says
    if answer_type != "integer":
        return boxed
    if boxed is not None:
        as_int = normalize_integer(boxed)
        if as_int is not None:
            return as_int
        found = integers(TEXT_WRAPPER.sub(r"\1", boxed))
        if len(found) == 1 and not _NOT_AN_INTEGER.search(boxed):
            return normalize_integer(found[0])
        return boxed
    answer_section = find_sections(final, ("Answer",)).get("Answer")
    if answer_section is not None:
        from_section = last_integer(answer_section.splitlines()[0])
        if from_section is not None:
            return from_section
    return last_integer(final)


def is_na(text: str | None) -> bool:
    """True for a missing or empty section, or one whose first line says N/A (or none)."""
    if text is None or not text.strip():
        return True
    return bool(_NA.match(text.strip().splitlines()[0]))


def summary_fallback(final: str, report_section: str = REPORT) -> str | None:
    """The whole final text up to the last ``[Answer]`` header, without any error report section.

    An error report whose first line says N/A keeps what follows that line (models often go on with
    their summary there, without a header).
    """
    spans = _spans(final, (*KNOWN_SECTIONS, report_section))
    report = " ".join(report_section.split()).lower()
    answer_starts = [span.start for span in spans if span.name == "answer"]
    end = answer_starts[-1] if answer_starts else len(final)
    pieces, cursor = [], 0
    for span in spans:
        if span.name != report or span.start >= end:
            continue
        pieces.append(final[cursor : span.start])
        body = final[span.body : span.end]
        cut = span.end
        if body.strip() and is_na(body):
            first = body.strip().splitlines()[0]
            cut = span.body + body.index(first) + len(first)
        cursor = min(cut, end)
    pieces.append(final[cursor:end])
    return "".join(pieces).strip() or None


def parse_rollout(
    content: str | None,
    reasoning: str | None,
    answer_type: AnswerType,
    section_names: Iterable[str] = KNOWN_SECTIONS,
    report_section: str = REPORT,
) -> ParsedRollout:
    """Parse one rollout into its sections (`section_names`, plus the Knowledge Flow ones).

    When no summary header is found, the whole final text up to ``[Answer]`` is the summary, as in the
    original method. An error report (section `report_section`) of "N/A" (or empty) is reported as None.
    When the final text is empty but there is reasoning (a thinking block never closed, e.g. cut at the token
    limit), the reasoning is parsed instead, as the original scripts parse the whole text.
    """
    thinking, final = split_thinking(content, reasoning)
    parsed_from = "content"
    if not final and thinking:
        final, parsed_from = thinking, "reasoning"
    names = tuple(dict.fromkeys((*KNOWN_SECTIONS, report_section, *section_names)))
    sections, raw = sections_of(final, names)
    report = sections.get(report_section)
    fallback = summary_fallback(final, report_section)
    return ParsedRollout(
        thinking=thinking,
        final=final,
        answer=read_answer(final, answer_type),
        summary=sections.get(SUMMARY) or fallback,
        summary_raw=raw.get(SUMMARY) or fallback,
        error_report=None if is_na(report) else report,
        sections=sections,
        raw=raw,
        parsed_from=parsed_from,
    )
