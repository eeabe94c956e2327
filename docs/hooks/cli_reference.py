"""MkDocs hook: the CLI reference page is generated from the `kflow` app when the site is built."""

from __future__ import annotations

from typing import Any

MARKER = "<!-- kflow-cli-reference -->"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any, **_kwargs: Any) -> str:
    if MARKER not in markdown:
        return markdown
    from knowledge_flow.cli.reference import cli_reference

    return markdown.replace(MARKER, cli_reference())
