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
- bounded (`knowledge_flow.prompts.bounds`): sizes of values and of the output, costly operations, call depth
  and time are capped.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable
from typing import Any

from jinja2 import StrictUndefined, Undefined, nodes
from jinja2.compiler import CodeGenerator, Frame, optimizeconst
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment

from knowledge_flow.prompts.bounds import (
    MAX_CALL_DEPTH,
    BoundedNamespace,
    TemplateBoundError,
    bounded_concat,
    bounded_filter,
    bounded_join,
    check_arguments,
    check_binop,
    check_method,
    check_value,
    mutated,
)

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


def _on_text(function: Callable[[str], str]) -> Callable[[Any], str]:
    """A text filter that reports an undefined input as Jinja does (which name, which attribute)."""

    def run(text: Any) -> str:
        if isinstance(text, Undefined):
            text._fail_with_undefined_error()
        return function(text)

    return functools.update_wrapper(run, function)


class BoundedCodeGenerator(CodeGenerator):
    """Compiles ``a ~ b`` to the environment's bounded join (Jinja's own is a plain ``"".join``)."""

    @optimizeconst
    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class BoundedEnvironment(SandboxedEnvironment):
    """Jinja's sandbox with the bounds of `knowledge_flow.prompts.bounds` on every operation that could build a
    large value, on calls and on captured output."""

    code_generator_class = BoundedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})
    concat = staticmethod(bounded_concat)

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.depth = threading.local()
        self.globals.pop("lipsum", None)
        self.globals["namespace"] = BoundedNamespace

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        check_binop(operator, left, right)
        return check_value(super().call_binop(context, operator, left, right))

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        depth = getattr(__self.depth, "value", 0)
        if depth >= MAX_CALL_DEPTH:
            raise TemplateBoundError(f"calls nest more than {MAX_CALL_DEPTH} deep (a recursive macro?)")
        check_arguments(args, kwargs)
        check_method(__obj, args, kwargs)
        if getattr(__obj, "__name__", None) == "join" and isinstance(getattr(__obj, "__self__", None), str):
            return bounded_join(__obj.__self__, *args)
        __self.depth.value = depth + 1
        try:
            result = super().call(__context, __obj, *args, **kwargs)
        finally:
            __self.depth.value = depth
        mutated(__obj)
        return check_value(result)


@functools.lru_cache(maxsize=1)
def environment() -> BoundedEnvironment:
    env = BoundedEnvironment(
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=False,
        lstrip_blocks=False,
    )
    env.filters.update({name: _on_text(function) for name, function in FILTERS.items()})
    env.filters.update({name: bounded_filter(function, name) for name, function in env.filters.items()})
    return env
