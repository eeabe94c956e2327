"""The command-line reference as Markdown, generated from the `kflow` app itself (the documentation site's CLI
page is built from it, so it cannot drift from the commands): per command, its usage, its help text and a
table of its arguments and options with their defaults.

Typer builds the commands on its own copy of Click, so commands and parameters are read by their attributes
(a group lists commands; a parameter says whether it is an argument).
"""

from __future__ import annotations

from typing import Any

import typer


def cell(text: str) -> str:
    """Text fit for a Markdown table cell (pipes and brackets escaped: ``[:split]`` is no link)."""
    return " ".join(text.split()).replace("|", "\\|").replace("[", "\\[").replace("]", "\\]")


def default_of(param: Any) -> str:
    default = param.default
    if not getattr(param, "show_default", True) or default is None or callable(default):
        return ""
    if getattr(param, "is_flag", False):
        return "on" if default else ""
    if isinstance(default, list | tuple):
        return ", ".join(str(value) for value in default)
    return f"`{default}`"


def names_of(param: Any) -> str:
    if is_argument(param):
        return f"`{param.name.upper() if param.name else ''}`" + ("" if param.required else " (optional)")
    flags = [*param.opts, *param.secondary_opts]
    return " / ".join(f"`{flag}`" for flag in flags) + (" (repeatable)" if getattr(param, "multiple", False) else "")


def is_argument(param: Any) -> bool:
    return bool(param.param_type_name == "argument")


def subcommands(group: Any) -> list[tuple[str, Any]]:
    """A group's visible commands, in the order its help lists them (empty for a command)."""
    if not hasattr(group, "list_commands"):
        return []
    context = group.context_class(group)
    found = [(name, group.get_command(context, name)) for name in group.list_commands(context)]
    return [(name, command) for name, command in found if command is not None and not command.hidden]


def command_markdown(path: str, command: Any, level: int) -> list[str]:
    lines = [f"{'#' * level} {path}", ""]
    arguments = " ".join(
        (p.name or "").upper() if p.required else f"[{(p.name or '').upper()}]"
        for p in command.params
        if is_argument(p)
    )
    lines += ["```", f"{path} [OPTIONS] {arguments}".rstrip(), "```", ""]
    if command.help:
        lines += [command.help.strip(), ""]
    params = [p for p in command.params if not getattr(p, "hidden", False)]
    if params:
        lines += ["| argument / option | default | description |", "|---|---|---|"]
        lines += [f"| {names_of(p)} | {default_of(p)} | {cell(getattr(p, 'help', None) or '')} |" for p in params]
        lines.append("")
    return lines


def walk(path: str, command: Any, level: int) -> list[str]:
    """A command's section; a group's help, then its commands one level down."""
    children = subcommands(command)
    if not children:
        return command_markdown(path, command, level)
    lines = [f"{'#' * level} {path}", "", (command.help or "").strip(), ""]
    for name, child in children:
        lines += walk(f"{path} {name}", child, level + 1)
    return lines


def cli_reference(app: typer.Typer | None = None) -> str:
    """Markdown for every command of `app` (default: `kflow`), in the order `kflow --help` lists them."""
    if app is None:
        from knowledge_flow.cli import app as kflow

        app = kflow
    root = typer.main.get_command(app)
    lines = [(root.help or "").strip(), ""]
    for name, command in subcommands(root):
        lines += walk(f"kflow {name}", command, 2)
    return "\n".join(lines).rstrip() + "\n"
