"""Reading boxed answers and integers from text: balanced ``\\boxed{...}``, the last integer, integer
normalisation. Total and linear-time, like the parsers."""

from __future__ import annotations

import re

from knowledge_flow.text.safe import CONTROL, ESCAPE_SEQUENCE

UNICODE_MINUS = "\u2212"
BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
INTEGER = re.compile(r"(?<![\w.])[-+\u2212]?\d{1,3}(?:,\d{3})+(?![\d,])|(?<![\w.])[-+\u2212]?\d+(?:\.0+)?(?![\d.]*\d)")
TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}")


def _matching_braces(text: str) -> dict[int, int]:
    """Index of each '{' -> index of its matching '}' (escaped braces ``\\{`` are ignored)."""
    stack: list[int] = []
    pairs: dict[int, int] = {}
    for i, ch in enumerate(text):
        if ch in "{}" and i and text[i - 1] == "\\":
            continue
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            pairs[stack.pop()] = i
    return pairs


def boxed_contents(text: str) -> list[str]:
    """Contents of every balanced ``\\boxed{...}`` (and ``\\fbox{...}``), in order."""
    if "\\boxed" not in text and "\\fbox" not in text:
        return []
    pairs = _matching_braces(text)
    found = []
    for match in BOXED.finditer(text):
        close = pairs.get(match.end() - 1)
        if close is not None:
            found.append(text[match.end() : close].strip())
    return found


def last_boxed(text: str) -> str | None:
    contents = [c for c in boxed_contents(text) if c]
    return contents[-1] if contents else None


def normalize_integer(raw: str) -> str | None:
    """'1,234' -> '1234', '$70$' -> '70', '\\text{70}' -> '70', '70.0' -> '70', '−2' -> '-2'; otherwise None."""
    text = TEXT_WRAPPER.sub(r"\1", raw).replace(UNICODE_MINUS, "-")
    for junk in ("$", "\\!", "\\,", "\\;", "\\ ", "{", "}", " ", "^\\circ", "\\circ", "\\%", "%"):
        text = text.replace(junk, "")
    text = text.strip().rstrip(".")
    if re.fullmatch(r"[-+]?\d{1,3}(?:,\d{3})+", text):
        text = text.replace(",", "")
    match = re.fullmatch(r"([-+]?)(\d+)(?:\.0+)?", text)
    if not match:
        return None
    sign, digits = match.groups()
    digits = digits.lstrip("0") or "0"  # as text: int() refuses numbers of more than 4300 digits
    return f"-{digits}" if sign == "-" and digits != "0" else digits


def integers(text: str) -> list[str]:
    """The integers `INTEGER` finds in `text`, but for those inside an escape sequence or next to one or to a
    control character: an integer that holds escape codes is no integer."""
    if not CONTROL.search(text):
        return INTEGER.findall(text)
    masked = ESCAPE_SEQUENCE.sub(lambda m: "\x00" * len(m.group()), text)
    found = []
    for match in INTEGER.finditer(masked):
        start, end = match.span()
        if (start and CONTROL.match(masked, start - 1)) or CONTROL.match(masked, end):
            continue
        found.append(match.group())
    return found


def last_integer(text: str) -> str | None:
    matches = integers(text)
    return normalize_integer(matches[-1]) if matches else None
