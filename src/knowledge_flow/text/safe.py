"""Text from outside (model replies, error bodies, files, URLs) made safe to store and to show.

- `storable`: what SQLite and UTF-8 files can hold: lone surrogates (JSON can carry them as ``\\ud800``) and
  NUL characters become U+FFFD. Every text of a reply goes through it before anything else sees it.
- `printable`: what a terminal shows as text and nothing else: escape sequences (CSI ``ESC [``, OSC ``ESC ]``
  up to its terminator, DCS/SOS/PM/APC strings, two-character ``ESC x``, and their 8-bit forms) are removed;
  other control characters (C0 but tab and newline, DEL, C1) and bidirectional overrides and isolates become
  U+FFFD. Everything the command line shows that came from outside goes through it (`cli.common.clean`).
- `json_line`: one JSON document on one line for ``--json``: ``json.dumps`` escapes C0 controls; C1 controls,
  bidirectional controls and lone surrogates are escaped here too (still valid JSON, same values).
"""

from __future__ import annotations

import json
import re
from typing import Any

REPLACEMENT = "\ufffd"

_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")

#: Escape sequences: CSI (7- and 8-bit) with its parameters; OSC, DCS, SOS, PM, APC strings up to BEL or ST
#: (unterminated, only their introducer goes); any other two-character escape.
ESCAPE_SEQUENCE = re.compile(
    r"(?:\x1b\[|\x9b)[\x20-\x3f]*[\x40-\x7e]?"
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)"
    r"|\x1b[\x20-\x7e]?"
)
#: Characters a terminal acts on rather than shows, and those that reorder the text around them.
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_JSON_UNSAFE = re.compile(r"[\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def storable(text: str) -> str:
    """`text` with lone surrogates and NUL characters replaced by U+FFFD."""
    return _UNSTORABLE.sub(REPLACEMENT, text) if _UNSTORABLE.search(text) else text


def printable(text: str, limit: int | None = None) -> str:
    """`text` without escape sequences, its other control characters replaced by U+FFFD (tab and newline
    are kept); cut to `limit` characters (the last one an ellipsis) when longer."""
    shown = CONTROL.sub(REPLACEMENT, ESCAPE_SEQUENCE.sub("", text))
    if limit is not None and len(shown) > limit:
        shown = shown[: max(limit - 1, 0)] + "…"
    return shown


def has_control(text: str) -> bool:
    """Whether `text` holds an escape sequence or a control character (tab and newline aside)."""
    return bool(CONTROL.search(text))


def json_line(value: Any) -> str:
    """`value` as one line of JSON (non-ASCII text kept) that is safe to print: see the module's docstring."""
    text = json.dumps(value, ensure_ascii=False)
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
