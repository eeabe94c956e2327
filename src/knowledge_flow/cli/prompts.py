"""`kflow prompts`: the built-in prompt sets, shown and exported as files to start from."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from knowledge_flow.cli.common import JsonOpt, fail, out


def prompts_list(as_json: JsonOpt = False) -> None:
    """The built-in prompt sets, the model families they are the default for, and what they follow."""
    from knowledge_flow.prompts import DEFAULT_SETS, builtin_names, load_prompt_set

    listing = []
    for name in builtin_names():
        loaded = load_prompt_set(name)
        families = sorted(family for family, default in DEFAULT_SETS.items() if default == name)
        listing.append(
            {
                "name": name,
                "sha256": loaded.digest,
                "default_for": families,
                "description": loaded.data.get("description", ""),
                "follows": loaded.data.get("follows", ""),
            }
        )
    if as_json:
        sys.stdout.write(json.dumps(listing, ensure_ascii=False) + "\n")
        return
    for entry in listing:
        default = f" (default for {', '.join(entry['default_for'])})" if entry["default_for"] else ""
        out.print(Text(f"{entry['name']}{default}  sha256 {entry['sha256'][:12]}", style="bold"))
        out.print(Text(f"  {entry['description']}"))
        out.print(Text(f"  follows: {entry['follows']}"))


def prompts_show(name: Annotated[str, typer.Argument(help="A built-in set or a .toml file.")]) -> None:
    """Print a prompt set's file (after checking it against every strategy it has a table for)."""
    sys.stdout.write(_checked_prompt_set(name).source)


def prompts_export(
    name: Annotated[str, typer.Argument(help="A built-in set.")],
    to: Annotated[Path, typer.Option("--to", help="The file to write (refused if it exists).")],
) -> None:
    """Write a built-in set to a file, to start a set of your own from it (`--prompts FILE`)."""
    loaded = _checked_prompt_set(name)
    if to.exists():
        raise fail(f"{to} already exists; choose another --to")
    if not to.parent.is_dir():
        raise fail(f"the folder of {to} does not exist")
    to.write_text(loaded.source, encoding="utf-8")
    out.print(f"wrote {to} ({loaded.name}, sha256 {loaded.digest[:12]}); use it with --prompts {to}")


def _checked_prompt_set(name: str) -> Any:
    from knowledge_flow.prompts import PromptSetError, load_prompt_set
    from knowledge_flow.strategies import STRATEGIES

    try:
        loaded = load_prompt_set(name)
        for strategy in STRATEGIES.values():
            if loaded.has_table(strategy.spec):
                loaded.table(strategy.spec)
    except PromptSetError as exc:
        raise fail(str(exc)) from None
    return loaded
