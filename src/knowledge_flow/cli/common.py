"""What the commands share: consoles, errors and exit codes, option types, the database and the endpoint.

Imports stay light here (typer, rich, the standard library): `kflow --help` and argument errors must answer
at once; commands import what they need when they run.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from knowledge_flow.context import DEFAULT_LOCAL_BASE_URL
from knowledge_flow.persistence.files import DEFAULT_DB

if TYPE_CHECKING:
    from knowledge_flow.persistence.store import RolloutStore, RunRow

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def clean(text: str | None, limit: int | None = None) -> str:
    """Model text made safe for a terminal (no control characters or escape sequences)."""
    if text is None:
        return "—"
    cleaned = _CONTROL.sub("�", text)
    if limit is not None and len(cleaned) > limit:
        cleaned = cleaned[: limit - 1] + "…"
    return cleaned


class UsageError(Exception):
    """Bad input: reported with exit code 2."""


def fail(message: str, code: int = 2) -> typer.Exit:
    err.print(Text(f"error: {message}", style="bold red"))
    return typer.Exit(code)


def check_base_url(url: str | list[str]) -> str:
    """One URL, or several (a list, or separated by commas: replicas); returned normalised, comma-joined."""
    from knowledge_flow.endpoint.urls import check_urls

    try:
        return ",".join(check_urls(url if isinstance(url, str) else ",".join(url)))
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def resolve_db(db: str | None) -> str:
    from knowledge_flow.persistence.files import check_db_path

    path = db or os.environ.get("KFLOW_DB") or DEFAULT_DB
    try:
        return str(check_db_path(path))
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def open_store(db: str, must_exist: bool = False) -> RolloutStore:
    from knowledge_flow.persistence.store import SchemaError, get_store

    if must_exist and not Path(db).is_file():
        raise UsageError(f"database {db!r} does not exist")
    try:
        return get_store(db)
    except SchemaError as exc:
        raise UsageError(str(exc)) from None


def open_run(db: str | None, thread_id: str) -> tuple[str, RolloutStore, RunRow]:
    """The database path, its store and the thread's latest run; UsageError when there is none."""
    db_path = resolve_db(db)
    store = open_store(db_path, must_exist=True)
    run = store.latest_run(thread_id)
    if run is None:
        raise UsageError(f"no run on thread {thread_id!r} in {db_path}")
    return db_path, store, run


def run_model(base_url: str, model: str | None) -> str | None:
    """The model a run sends when the user named none (no --model, no KFLOW_MODEL): on the local endpoint, the
    model its running server serves, else the packaged model `endpoint` will start there (the 1.5B one when
    installed). Elsewhere, and when a model was named, `model` as given."""
    if model is not None or os.environ.get("KFLOW_MODEL") or base_url != DEFAULT_LOCAL_BASE_URL:
        return model
    from knowledge_flow.server_launch.local import preferred_model
    from knowledge_flow.server_launch.process import models_ready, served_model

    if models_ready(base_url):
        return served_model(base_url) or model
    return preferred_model().served_name


@contextmanager
def endpoint(base_url: str, model: str | None = None) -> Iterator[str]:
    """Yield the base URL to use. The embedded local server is started for the command if it is the
    target and is not running yet (and stopped afterwards): with `model` when it names a packaged model,
    else with the default one."""
    from knowledge_flow.server_launch.model_files import PACKAGED_MODELS, ModelError
    from knowledge_flow.server_launch.process import ServerError, models_ready

    if base_url != DEFAULT_LOCAL_BASE_URL or models_ready(base_url):
        yield base_url
        return
    from knowledge_flow.server_launch.local import start_local

    packaged = next((m.name for m in PACKAGED_MODELS.values() if model in (m.name, m.served_name)), None)
    err.print(f"the local model server is not running at {base_url}; starting it for this command")
    try:
        server = start_local(model=packaged, write_pid_file=False, progress=lambda m: err.print(f"  {m}"))
    except (ServerError, ModelError) as exc:
        raise UsageError(
            f"{exc}\nStart a server with `kflow serve local`, or pass --base-url URL of an OpenAI-compatible "
            "endpoint (e.g. vLLM)."
        ) from None
    try:
        yield base_url
    finally:
        server.stop()


@dataclass(frozen=True)
class RequestSettings:
    """How each request is sent: retries and the time to wait for a completion."""

    max_retries: int = 6
    request_timeout: float = 3600.0


MaxRetriesOpt = Annotated[
    int, typer.Option("--max-retries", min=0, help="Retries on 429, 5xx, timeouts and lost connections.")
]


TimeoutOpt = Annotated[float, typer.Option("--request-timeout", min=1.0, help="Seconds to wait for one completion.")]


BaseUrlOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--base-url",
        help="OpenAI-compatible endpoint; several (replicas): repeat the option or separate them by commas; "
        "env KFLOW_BASE_URL; default: the local server.",
    ),
]


DbOpt = Annotated[str | None, typer.Option("--db", help="SQLite file (env KFLOW_DB; default knowledge_flow.db).")]


JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout; progress goes to stderr.")]


err = Console(stderr=True, highlight=False, soft_wrap=True)
#: Not a terminal (a log, a pipe): wide enough that tables keep whole identifiers on one line.
WIDE = 200


out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else WIDE)


def table(*headers: str) -> Table:
    """A table whose cells fold onto more lines rather than being cut: identifiers are shown whole."""
    made = Table(*headers)
    for column in made.columns:
        column.overflow = "fold"
    return made
