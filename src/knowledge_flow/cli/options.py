"""The run options of `kflow solve` and `kflow eval`, built from `knowledge_flow.options.RunOptions`.

Every option's flag, type, help text and default come from its field; a command decorated with
`with_run_options` receives them as one mapping (`options`), None meaning "not given" (so a resumed run can
tell what the user asked to change).
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

import typer

from knowledge_flow.options import OPTION_NAMES, choices_of, field_info, flag_of

F = TypeVar("F", bound=Callable[..., Any])


def _cli_type(annotation: Any) -> type[Any]:
    """The scalar type the command line parses for a field (Literal and JSON objects as text)."""
    for arg in (annotation, *get_args(annotation)):
        origin = get_origin(arg)
        if arg is bool:
            return bool
        if arg in (int, float, str):
            return arg  # type: ignore[no-any-return]
        if origin is Literal or origin is dict or arg is dict:
            return str
        if origin is typing.Annotated:
            return _cli_type(get_args(arg)[0])
    if get_origin(annotation) in (types.UnionType, typing.Union):
        return _cli_type(next(a for a in get_args(annotation) if a is not type(None)))
    return str


def help_of(name: str) -> str:
    """The option's help: its description, choices and defaults (those that depend on the strategy listed);
    the brackets escaped, or the help's rich markup would take them for a tag and drop them."""
    from rich.markup import escape

    from knowledge_flow.strategies import default_text

    info = field_info(name)
    text = str(info.description or "")
    choices = choices_of(name)
    if choices and not all(choice in text for choice in choices):
        text += f" One of: {', '.join(choices)}."
    by_strategy = default_text(name)
    if by_strategy is not None:
        text += escape(f" [{by_strategy}]")
    elif info.default is not None and info.default is not False:
        text += escape(f" [default: {info.default}]")
    return text


def run_option_parameters() -> list[inspect.Parameter]:
    parameters = []
    for name in OPTION_NAMES:
        kind = _cli_type(field_info(name).annotation)
        option = typer.Option(flag_of(name), help=help_of(name), show_default=False, rich_help_panel="Run options")
        parameters.append(
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[kind | None, option]
            )
        )
    return parameters


def with_run_options(command: F) -> F:
    """Add every run option to `command`'s command-line parameters; it receives them as `options`."""
    hints = typing.get_type_hints(command, include_extras=True)
    signature = inspect.signature(command)
    own = [
        parameter.replace(annotation=hints.get(name, parameter.annotation))
        for name, parameter in signature.parameters.items()
        if name != "options"
    ]
    parameters = own + run_option_parameters()

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        options = {name: kwargs.pop(name, None) for name in OPTION_NAMES}
        return command(options=options, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    return wrapper  # type: ignore[return-value]
