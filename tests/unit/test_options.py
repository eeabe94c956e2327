"""Run options are defined once (`RunOptions`); the command line, the graph's input schema and the resolved
parameters the nodes read all follow from it."""

from __future__ import annotations

from typing import Any

import pytest
from typer.main import get_command

from knowledge_flow.cli import app
from knowledge_flow.options import OPTION_NAMES, RunOptions, flag_of, on_resume, parse_options
from knowledge_flow.state import InputState, RunParams


def command_flags(name: str) -> dict[str, Any]:
    """The command's options by flag (typer builds click-style commands)."""
    command = get_command(app).commands[name]  # type: ignore[attr-defined]
    return {flag: param for param in command.params for flag in getattr(param, "opts", ()) if flag.startswith("--")}


@pytest.mark.parametrize("command", ["solve", "eval"])
def test_every_option_is_on_the_command_line_with_its_help(command: str) -> None:
    flags = command_flags(command)
    for name in OPTION_NAMES:
        option = flags[flag_of(name)]
        assert option.name == name and option.default is None  # None: not given (a resume tells them apart)
        assert str(RunOptions.model_fields[name].description) in (option.help or "")


def test_every_option_is_an_input_with_description_and_default() -> None:
    from typing import get_type_hints

    from pydantic import TypeAdapter

    from knowledge_flow.strategies import default_text

    schema = TypeAdapter(InputState).json_schema()["properties"]
    assert set(schema) == {"problem", *OPTION_NAMES}
    for name in OPTION_NAMES:
        field = RunOptions.model_fields[name]
        by_strategy = default_text(name)  # the defaults that depend on the strategy, from the strategies
        assert schema[name]["description"] == f"{field.description}{f' ({by_strategy})' if by_strategy else ''}"
        assert schema[name]["default"] == field.default
    assert set(OPTION_NAMES) <= set(get_type_hints(RunParams))
    assert schema["max_new_tokens"]["description"].endswith("(default: 512; deepconf: 64000)")
    assert schema["top_p"]["description"].endswith("(default: 1.0; deepconf: 0.95)")
    assert schema["thinkers"]["description"].endswith("(default: 1; trt: 2; deepconf: 16)")
    assert schema["trace_budget"]["description"].endswith("(default: none; deepconf: 256)")


def test_a_new_option_needs_one_field(monkeypatch: pytest.MonkeyPatch) -> None:
    """Adding a field to RunOptions gives a validated command-line option (the decorator reads the model)."""
    from knowledge_flow.cli.options import run_option_parameters

    assert [p.name for p in run_option_parameters()] == list(OPTION_NAMES)
    assert on_resume("iterations") == "extend" and on_resume("temperature") == "fixed"
    assert flag_of("knowledge_budget_tokens") == "--knowledge-budget" and flag_of("top_p") == "--top-p"


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"iterations": 0}, "iterations must be between 1 and 10000, got 0"),
        ({"iterations": 2.5}, "iterations must be a whole number"),
        ({"temperature": True}, "temperature must be a number"),
        ({"answer_type": "float"}, "answer_type must be one of"),
        ({"extra_body": "[1]"}, "extra_body"),
        ({"thinkers": 2, "topk_thinkers": 3}, "topk_thinkers (3) cannot exceed thinkers (2)"),
        ({"bogus": 1}, "unknown option 'bogus'"),
    ],
)
def test_one_line_messages(given: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_options(given)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_strategy_defaults_name_options_that_can_take_them() -> None:
    """A strategy's default can only fill an option the user left out, so the option's field is None by default."""
    from knowledge_flow.strategies import STRATEGIES

    named = {name for strategy in STRATEGIES.values() for name in strategy.defaults}
    assert {"thinkers", "iterations", "max_new_tokens", "top_p", "trace_budget"} <= named
    for name in named:
        assert RunOptions.model_fields[name].default is None, name
