"""What the commands share: consoles, errors and exit codes, option types, the database and the endpoint.

Imports stay light here (typer, rich, the standard library): `kflow --help` and argument errors must answer
at once; commands import what they need when they run.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from knowledge_flow.context import DEFAULT_LOCAL_BASE_URL
from knowledge_flow.persistence.files import DEFAULT_DB
from knowledge_flow.persistence.urls import shown
from knowledge_flow.text.safe import json_line, printable

if TYPE_CHECKING:
    from knowledge_flow.persistence.store import RolloutStore, RunRow


def clean(text: str | None, limit: int | None = None) -> str:
    """Text from outside (model output, error bodies, files, stored values) as it is shown: no escape
    sequences, control characters or bidirectional overrides (`knowledge_flow.text.safe.printable`); None
    is a dash. Everything a command shows that it did not write itself goes through here."""
    if text is None:
        return "—"
    return printable(text, limit)


def write_json(value: object) -> None:
    """``--json``: the command's one JSON object on one line of stdout, safe to print
    (`knowledge_flow.text.safe.json_line`); a later failure then adds none (`fail`)."""
    sys.stdout.write(json_line(value) + "\n")
    sys.stdout.flush()
    OUTCOME.written = True


class UsageError(Exception):
    """Bad input: reported with exit code 2."""


@dataclass
class JsonOutcome:
    """With ``--json``, stdout holds exactly one JSON object, whatever the outcome: the command's result, or
    (`fail`) its status and the reason."""

    enabled: bool = False
    fields: dict[str, Any] = field(default_factory=dict)
    written: bool = False


OUTCOME = JsonOutcome()
#: A failure's status in its JSON object, by exit code.
STATUS_OF_CODE = {2: "error", 1: "failed", 130: "stopped"}


def json_outcome(enabled: bool, **fields: Any) -> None:
    """Start a command that prints one JSON object when `enabled`; `fields` (and those added later to
    `OUTCOME.fields`) go into the object of a failure."""
    OUTCOME.enabled, OUTCOME.written = enabled, False
    OUTCOME.fields = dict(fields)


def fail(message: str, code: int = 2, *, status: str | None = None) -> typer.Exit:
    """Report a failure (one line on stderr; with ``--json`` also its object on stdout, with `status` or the
    exit code's) and the exit to raise: 2 for bad input (nothing was written), 1 for a failure, 130 for a
    stop. The message is made printable: it often quotes outside text."""
    message = clean(message)
    err.print(Text(f"error: {message}", style="bold red"))
    if OUTCOME.enabled and not OUTCOME.written:
        status = status or STATUS_OF_CODE.get(code, "failed")
        write_json({**OUTCOME.fields, "status": status, "reason": message, "exit_code": code})
    return typer.Exit(code)


def check_base_url(url: str | list[str]) -> str:
    """One URL, or several (a list, or separated by commas: replicas); returned normalised, comma-joined."""
    from knowledge_flow.endpoint.urls import check_urls

    try:
        return ",".join(check_urls(url if isinstance(url, str) else ",".join(url)))
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def warn_withheld(base_url: str) -> None:
    """A stored URL read back has no secrets: say which query parameters will not be sent."""
    from knowledge_flow.endpoint.urls import address, split_urls

    withheld = sorted({name for url in split_urls(base_url) for name in address(url).withheld})
    if withheld:
        names = ", ".join(withheld)
        err.print(
            Text(
                clean(
                    f"warning: the stored endpoint URL's secret parameters ({names}) are not kept; pass --base-url "
                    "with them if the endpoint needs them"
                ),
                style="yellow",
            )
        )


#: The database the command works on, once resolved (named in a database failure's message).
_CURRENT_DB: list[str] = []


def current_db() -> str | None:
    return _CURRENT_DB[-1] if _CURRENT_DB else None


def resolve_db(db: str | None) -> str:
    """The database to use: `db`, else ``KFLOW_DB``, else the default file; checked (an SQLite path:
    `check_db_path`; a PostgreSQL URL: reachable and not another program's)."""
    from knowledge_flow.persistence.urls import database_key

    target = db or os.environ.get("KFLOW_DB") or DEFAULT_DB
    try:
        resolved = database_key(target)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    _CURRENT_DB.append(resolved)
    return resolved


def open_store(db: str, must_exist: bool = False, *, writable: bool = False) -> RolloutStore:
    """The database's store; UsageError (nothing written) when it is missing or holds no knowledge-flow data
    yet (`must_exist`: nothing is created for a command that only reads), is from a newer version, damaged, or
    cannot be written by a command that writes (`writable`, an SQLite file)."""
    from knowledge_flow.persistence.files import probe_writable
    from knowledge_flow.persistence.store import SchemaError, get_store
    from knowledge_flow.persistence.urls import is_postgres

    if must_exist and not is_postgres(db) and not Path(db).is_file():
        raise UsageError(f"database {db!r} does not exist")
    try:
        if must_exist and is_postgres(db):
            from knowledge_flow.persistence.postgres import has_schema

            if not has_schema(db):
                raise UsageError(f"database {shown(db)} holds no knowledge-flow runs")
        if writable and not is_postgres(db):
            probe_writable(Path(db))
        return get_store(db)
    except (SchemaError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    except Exception as exc:
        problem = database_failure(exc, db)
        if problem is None:
            raise
        raise UsageError(problem) from None


def database_failure(exc: BaseException, db: str | None = None) -> str | None:
    """One line for an error of the database (SQLite, a damaged stored value), or None for other errors."""
    import sqlite3
    import zlib

    from sqlalchemy.exc import DBAPIError

    from knowledge_flow.persistence.damage import StoreDamaged
    from knowledge_flow.persistence.files import database_problem

    where = f"database {shown(db)!r}" if db else "the database"
    if isinstance(exc, StoreDamaged):
        return f"{where} is damaged: {exc}"
    if isinstance(exc, zlib.error):
        return f"{where} is damaged: a compressed value cannot be read ({exc}); restore it from a copy"
    if isinstance(exc, DBAPIError | sqlite3.Error):
        return f"{where} {database_problem(exc)}"
    return None


def open_run(db: str | None, thread_id: str, *, writable: bool = False) -> tuple[str, RolloutStore, RunRow]:
    """The database path, its store and the thread's latest run; UsageError when there is none."""
    db_path = resolve_db(db)
    store = open_store(db_path, must_exist=True, writable=writable)
    try:
        run = store.latest_run(thread_id)
    except Exception as exc:
        problem = database_failure(exc, db_path)
        if problem is None:
            raise
        raise UsageError(problem) from None
    if run is None:
        raise UsageError(f"no run on thread {thread_id!r} in {shown(db_path)}")
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
        server = start_local(model=packaged, write_pid_file=False, progress=lambda m: err.print(Text(f"  {clean(m)}")))
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


TimeoutOpt = Annotated[
    float,
    typer.Option(
        "--request-timeout",
        min=1.0,
        help="Seconds to wait for one completion, and to read its reply (a stream as a whole).",
    ),
]


BaseUrlOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--base-url",
        help="OpenAI-compatible endpoint; several (replicas): repeat the option or separate them by commas; "
        "env KFLOW_BASE_URL; default: the local server.",
    ),
]


DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="SQLite file, or a PostgreSQL database postgresql://USER@HOST[:PORT]/DB (password: PGPASSWORD or "
        "~/.pgpass); env KFLOW_DB; default knowledge_flow.db.",
    ),
]


JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout; progress goes to stderr.")]


#: No markup or emoji codes: a text printed is shown as it is (after `clean`), never interpreted.
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False, emoji=False)
#: Not a terminal (a log, a pipe): wide enough that tables keep whole identifiers on one line.
WIDE = 200


out = Console(highlight=False, soft_wrap=True, markup=False, emoji=False, width=None if sys.stdout.isatty() else WIDE)


def table(*headers: str) -> Table:
    """A table whose cells fold onto more lines rather than being cut: identifiers are shown whole."""
    made = Table(*headers)
    for column in made.columns:
        column.overflow = "fold"
    return made
