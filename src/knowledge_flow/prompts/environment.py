"""The Jinja2 environment prompt templates are rendered in, and its filters.

Settings (so that a prompt can be reproduced byte for byte):

- sandboxed (`jinja2.sandbox.SandboxedEnvironment`): a template cannot reach Python internals;
- undefined variables are errors (`StrictUndefined`), at load time for names no strategy provides;
- no autoescaping, ``trim_blocks`` and ``lstrip_blocks`` off, ``keep_trailing_newline`` on: every character
  outside ``{{ }}`` / ``{% %}`` is sent as written, including the newline after a block tag; use Jinja's
  ``{%-`` / ``-%}`` to remove whitespace around a tag.
- In TOML, write templates as literal strings (``'''...'''``): backslashes stay as written (``\\boxed``), and
  the newline right after the opening ``'''`` is not part of the string.
- A literal brace right before an expression (``\\boxed{<integer>}``) is written ``\\boxed{ {{- answer_slot }}}``.
"""

from __future__ import annotations

import functools
import re

from jinja2 import StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

_LEADING_COLON = re.compile(r"^\s*:\s*")


def strip_first_colon(text: str) -> str:
    """Delete the first ``:`` in the text and the whitespace right after it (as the original scripts do)."""
    index = text.find(":")
    if index < 0:
        return text
    return text[:index] + text[index + 1 :].lstrip()


def strip_leading_colon(text: str) -> str:
    """Delete a ``:`` (and the whitespace around it) only where the text starts with one."""
    return _LEADING_COLON.sub("", text, count=1)


def lower_first(text: str) -> str:
    """Lower-case the first character."""
    return text[:1].lower() + text[1:]


def one_line(text: str) -> str:
    """Collapse every run of whitespace (newlines included) into one space."""
    return " ".join(text.split())


FILTERS = {
    "strip_first_colon": strip_first_colon,
    "strip_leading_colon": strip_leading_colon,
    "lower_first": lower_first,
    "one_line": one_line,
}


@functools.lru_cache(maxsize=1)
def environment() -> SandboxedEnvironment:
    env = SandboxedEnvironment(
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=False,
        lstrip_blocks=False,
    )
    env.filters.update(FILTERS)
    return env
