"""The CLI reference of the documentation site is generated from the commands: every command and every option
is in it, with what `--help` says."""

from __future__ import annotations

import re

from knowledge_flow.cli.reference import cell, cli_reference
from knowledge_flow.options import OPTION_NAMES, flag_of


def section(text: str, heading: str) -> str:
    start = text.index(f"\n{heading}\n")
    following = re.search(r"\n#{2,3} kflow ", text[start + len(heading) + 2 :])
    return text[start : start + len(heading) + 2 + (following.start() if following else len(text))]


def test_every_command_has_a_section() -> None:
    text = cli_reference()
    headings = re.findall(r"^(#+) (kflow.*)$", text, re.M)
    assert [name for _, name in headings] == [
        "kflow solve",
        "kflow resume",
        "kflow show",
        "kflow threads",
        "kflow demo",
        "kflow eval",
        "kflow report",
        "kflow serve",
        "kflow serve vllm",
        "kflow serve local",
        "kflow serve stop",
        "kflow db",
        "kflow db copy",
        "kflow prompts",
        "kflow prompts list",
        "kflow prompts show",
        "kflow prompts export",
    ]
    assert {level for level, name in headings if name.count(" ") == 2} == {"###"}


def test_every_run_option_is_documented_for_solve_and_eval() -> None:
    text = cli_reference()
    for command in ("kflow solve", "kflow eval"):
        body = section(text, f"## {command}")
        for name in OPTION_NAMES:
            assert f"| `{flag_of(name)}` |" in body, (command, name)
    report = section(text, "## kflow report")
    assert "| `--html` |" in report and "| `RUN_ID` |" in report
    assert "| `--answer-rule` | `default` |" in report  # the default, as --help shows it
    assert "kflow report [OPTIONS] RUN_ID" in report


def test_cells_do_not_break_tables_or_make_links() -> None:
    assert cell("a | b [:split]\n  c") == "a \\| b \\[:split\\] c"
    eval_section = section(cli_reference(), "## kflow eval")
    assert "hf:ORG/NAME\\[:config\\]\\[:split\\]" in eval_section
