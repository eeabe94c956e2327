"""What a prompt template may cost: bounded values, bounded operations, a time limit.

Jinja's sandbox keeps a template away from Python's internals; these bounds keep it from exhausting the
machine. Every template is compiled and rendered under them:

- **Output**: a rendered text has at most `MAX_CHARS` characters (a longer one would not fit any served
  context anyway; a prompt longer than the served context is refused before it is sent).
- **Values**: every string a template builds has at most `MAX_CHARS` characters, every list or mapping at
  most `MAX_ITEMS` items, every integer at most `MAX_INT_BITS` bits. The operations that could build more
  are checked *before* they run (CPython's arithmetic and string building cannot be interrupted once
  started): ``**`` and ``*`` on integers, repeating (``'x' * n``) and joining strings and lists, ``~``,
  ``%``-formatting and ``str.format`` widths, ``join``, ``replace``, ``center`` and other widths of filters
  and methods (an integer argument above `MAX_CHARS` is refused), captured blocks and macro results.
  ``range`` is Jinja's sandbox's (at most 100,000 items).
- **Calls** (macros, methods, globals) nest at most `MAX_CALL_DEPTH` deep: a recursive macro ends with an
  error, not a crash of the interpreter's stack.
- **Time**: compiling or rendering one template may take `CPU_SECONDS` of CPU time (`WALL_SECONDS` of wall
  time at most, however loaded the machine): `knowledge_flow.prompts.watchdog` stops a render that takes
  longer by raising an exception in its thread, which ends any Python-level loop.

A template that goes past a bound raises `TemplateBoundError` (a Jinja `SecurityError`); `guarded` turns
that and every other failure of a template into one `TemplateFailure` with a one-line reason.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from jinja2.exceptions import SecurityError
from jinja2.utils import Namespace

from knowledge_flow.prompts.watchdog import TimeLimitExceeded, time_limit

MAX_CHARS = 1_000_000
MAX_ITEMS = 1_000_000
MAX_INT_BITS = 4096
MAX_CALL_DEPTH = 100
CPU_SECONDS = 5.0
WALL_SECONDS = 60.0

T = TypeVar("T")


class TemplateBoundError(SecurityError):
    """A template went past one of the bounds."""


class TemplateFailure(Exception):
    """A template could not be compiled or rendered; the message is one line."""


# --- sizes ---------------------------------------------------------------------------------------------


def check_value(value: T) -> T:
    """`value`, or TemplateBoundError when it is larger than the bounds."""
    if isinstance(value, str | bytes):
        if len(value) > MAX_CHARS:
            raise TemplateBoundError(f"a string of {len(value):,} characters (the bound is {MAX_CHARS:,})")
    elif isinstance(value, int) and not isinstance(value, bool):
        if value.bit_length() > MAX_INT_BITS:
            raise TemplateBoundError(f"an integer of more than {MAX_INT_BITS} bits")
    elif isinstance(value, list | tuple | dict | set | frozenset) and len(value) > MAX_ITEMS:
        raise TemplateBoundError(f"a collection of {len(value):,} items (the bound is {MAX_ITEMS:,})")
    return value


def _refuse_count(count: int, limit: int, what: str, unit: str) -> None:
    if count > limit:
        raise TemplateBoundError(f"{what} of {count:,} {unit} (the bound is {limit:,})")


def check_binop(operator: str, left: Any, right: Any) -> None:
    """Refuse an operation whose result would be larger than the bounds, before it runs."""
    ints = isinstance(left, int) and isinstance(right, int) and not isinstance(left | right, bool)
    if operator == "**" and ints and right > 0 and abs(left) > 1:
        _refuse_count((abs(left).bit_length() - 1) * right, MAX_INT_BITS, "a power", "bits")
    elif operator == "*" and ints:
        _refuse_count(abs(left).bit_length() + abs(right).bit_length(), MAX_INT_BITS + 1, "a product", "bits")
    elif operator == "*":
        sequence, count = (left, right) if isinstance(right, int) else (right, left)
        if isinstance(sequence, str | bytes | list | tuple) and isinstance(count, int) and count > 0:
            limit, unit = (MAX_CHARS, "characters") if isinstance(sequence, str | bytes) else (MAX_ITEMS, "items")
            _refuse_count(len(sequence) * count, limit, "a repetition", unit)
    elif operator == "+" and isinstance(left, str | bytes | list | tuple) and type(left) is type(right):
        limit, unit = (MAX_CHARS, "characters") if isinstance(left, str | bytes) else (MAX_ITEMS, "items")
        _refuse_count(len(left) + len(right), limit, "a concatenation", unit)
    elif operator == "%" and isinstance(left, str):
        check_percent_format(left, right)


_PERCENT = re.compile(r"%(?:\([^)]*\))?[-+ #0]*(\d+|\*)?(?:\.(\d+|\*))?")
_DIGITS = re.compile(r"\d+")


def check_percent_format(fmt: str, args: Any) -> None:
    """Refuse ``fmt % args`` whose widths or precisions (written, or given as ``*``) exceed `MAX_CHARS`."""
    values = args if isinstance(args, tuple) else (args,)
    for match in _PERCENT.finditer(fmt):
        for part in match.groups():
            if part is not None and part != "*" and int(part) > MAX_CHARS:
                raise TemplateBoundError(f"a format width of {int(part):,} (the bound is {MAX_CHARS:,})")
    if "*" in fmt:
        check_arguments(values, {})


def check_brace_format(fmt: str) -> None:
    """Refuse ``fmt.format(...)`` whose field widths or precisions exceed `MAX_CHARS`."""
    for _literal, _field, spec, _conversion in string.Formatter().parse(fmt):
        for number in _DIGITS.findall(spec or ""):
            if int(number) > MAX_CHARS:
                raise TemplateBoundError(f"a format width of {int(number):,} (the bound is {MAX_CHARS:,})")


def check_arguments(args: Iterable[Any], kwargs: dict[str, Any]) -> None:
    """Refuse an integer argument above `MAX_CHARS` (a width or a count) of a filter or method."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_CHARS:
            raise TemplateBoundError(f"an argument of {value:,} (the bound for widths and counts is {MAX_CHARS:,})")


def bounded_concat(parts: Iterable[Any]) -> str:
    """``"".join`` of the parts' texts, refused as soon as they pass `MAX_CHARS` (captured blocks, macro results,
    ``~``, the ``join`` filter and ``str.join``)."""
    pieces: list[str] = []
    total = 0
    for part in parts:
        text = part if isinstance(part, str) else str(part)
        total += len(text)
        if total > MAX_CHARS:
            raise TemplateBoundError(f"a text of more than {MAX_CHARS:,} characters")
        pieces.append(text)
    return "".join(pieces)


def bounded_join(separator: str, items: Iterable[Any]) -> str:
    collected = list(items) if not isinstance(items, list | tuple) else items
    _refuse_count(len(separator) * max(0, len(collected) - 1), MAX_CHARS, "separators", "characters")
    parts: list[Any] = []
    for index, item in enumerate(collected):
        if index:
            parts.append(separator)
        parts.append(item)
    return bounded_concat(parts)


def check_method(method: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Estimate what a string method would build before it runs."""
    owner = getattr(method, "__self__", None)
    wrapped = getattr(method, "__wrapped__", None)  # the sandbox's own `str.format` wrapper
    if owner is None and wrapped is not None:
        owner, method = getattr(wrapped, "__self__", None), wrapped
    if not isinstance(owner, str):
        return
    name = getattr(method, "__name__", "")
    if name in ("format", "format_map"):
        check_brace_format(owner)
    elif name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(size, int):
            _refuse_count(len(owner) + owner.count("\t") * size, MAX_CHARS, "a text with tabs expanded", "characters")
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        found = owner.count(args[0]) if args[0] else len(owner) + 1
        _refuse_count(
            len(owner) + found * max(0, len(args[1]) - len(args[0])), MAX_CHARS, "a replaced text", "characters"
        )
    elif name == "translate" and args and isinstance(args[0], dict):
        longest = max((len(v) for v in args[0].values() if isinstance(v, str)), default=1)
        _refuse_count(len(owner) * max(1, longest), MAX_CHARS, "a translated text", "characters")


def mutated(method: Any) -> None:
    """After a method of a list, mapping or set ran (``append`` in a loop): its size must stay in bounds."""
    owner = getattr(method, "__self__", None)
    if isinstance(owner, list | dict | set):
        check_value(owner)


class BoundedNamespace(Namespace):
    """Jinja's ``namespace()``, whose assignments are checked (a value doubled at each step of a loop)."""

    def __setitem__(self, name: str, value: Any) -> None:
        super().__setitem__(name, check_value(value))


def bounded_filter(function: Callable[..., Any], name: str) -> Callable[..., Any]:
    """A filter whose integer arguments and result are checked (``join`` stops at the bound)."""
    skip = 1 if getattr(function, "jinja_pass_arg", None) is not None else 0  # a context comes first

    def run(*args: Any, **kwargs: Any) -> Any:
        head, values = args[:skip], list(args[skip:])
        check_arguments(values[1:], kwargs)
        if name == "format" and values and isinstance(values[0], str):
            check_percent_format(values[0], tuple(values[1:]) or kwargs)
        elif name == "replace" and len(values) >= 3 and isinstance(values[0], str):
            check_method(values[0].replace, (str(values[1]), str(values[2])), {})
        elif name == "join" and values:
            items = _collect(values[0])
            separator = values[1] if len(values) > 1 else kwargs.get("d", "")
            if isinstance(separator, str):
                bounded_join(separator, [str(item) for item in items])  # refused before the filter builds it
            values[0] = items
        return check_value(function(*head, *values, **kwargs))

    run.__dict__.update(getattr(function, "__dict__", {}))  # Jinja's pass_context / pass_eval_context mark
    run.__name__ = getattr(function, "__name__", name)
    run.__doc__ = function.__doc__
    return run


def _collect(items: Iterable[Any]) -> list[Any]:
    collected: list[Any] = []
    for item in items:
        collected.append(item)
        if len(collected) > MAX_ITEMS:
            raise TemplateBoundError(f"a join of more than {MAX_ITEMS:,} items")
    return collected


def guarded(work: Callable[[], T]) -> T:
    """Run template work (compiling, rendering) under the time limit; any failure becomes one
    `TemplateFailure` with a one-line reason."""
    try:
        with time_limit(CPU_SECONDS, WALL_SECONDS):
            return work()
    except TimeLimitExceeded:
        raise TemplateFailure(f"took more than {CPU_SECONDS:g} s (the time limit of a template)") from None
    except RecursionError:
        raise TemplateFailure("nests too deeply") from None
    except MemoryError:
        raise TemplateFailure("ran out of memory") from None
    except Exception as exc:  # a template's failure, whatever raised it, is the template's
        raise TemplateFailure(one_line(exc)) from None


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:299] + "…"


def render_bounded(chunks: Iterable[str]) -> str:
    """The rendered text from a template's output chunks, refused once it passes `MAX_CHARS`."""
    pieces: list[str] = []
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total > MAX_CHARS:
            raise TemplateBoundError(f"the rendered text is longer than {MAX_CHARS:,} characters")
        pieces.append(chunk)
    return "".join(pieces)


__all__ = [
    "CPU_SECONDS",
    "MAX_CALL_DEPTH",
    "MAX_CHARS",
    "MAX_INT_BITS",
    "MAX_ITEMS",
    "WALL_SECONDS",
    "BoundedNamespace",
    "TemplateBoundError",
    "TemplateFailure",
    "bounded_concat",
    "bounded_filter",
    "bounded_join",
    "check_arguments",
    "check_binop",
    "check_method",
    "check_value",
    "guarded",
    "mutated",
    "render_bounded",
]
