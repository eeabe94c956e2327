"""`kflow db copy`: move runs and evaluations between databases (a laptop's SQLite file and a cluster's
PostgreSQL database, either way)."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from knowledge_flow.cli.common import JsonOpt, UsageError, err, fail, open_store, out, resolve_db
from knowledge_flow.persistence.urls import shown


def db_copy(
    source: Annotated[str, typer.Argument(help="The database to copy from: an SQLite file or a postgresql:// URL.")],
    target: Annotated[
        str, typer.Argument(help="The database to copy into (created if it is a new file; may hold other runs).")
    ],
    as_json: JsonOpt = False,
) -> None:
    """Copy every run and evaluation (rollouts, texts, checkpoints) from SOURCE to TARGET: the copies are shown,
    reported and resumed as the originals."""
    from knowledge_flow.persistence.checkpointer import get_checkpointer
    from knowledge_flow.persistence.copy import copy_database, running

    try:
        source_db, target_db = resolve_db(source), resolve_db(target)
        if source_db == target_db:
            raise UsageError("the source and the target are the same database")
        source_store = open_store(source_db, must_exist=True)
        held = running(source_store)
        if held is not None:
            raise UsageError(
                f"{shown(source_db)} is in use (pid {held.pid} on {held.host} holds {held.key}); copy it when that "
                "process has stopped"
            )
        target_store = open_store(target_db)
    except UsageError as exc:
        raise fail(str(exc)) from None
    source_checkpoints, target_checkpoints = get_checkpointer(source_db), get_checkpointer(target_db)
    try:
        copied = copy_database(
            source_store, target_store, source_checkpoints, target_checkpoints, progress=lambda m: err.print(m)
        )
    except ValueError as exc:
        raise fail(str(exc)) from None
    finally:
        source_checkpoints.close()
        target_checkpoints.close()
    summary = {
        "source": shown(source_db),
        "target": shown(target_db),
        "rows": copied.rows,
        "threads": copied.threads,
        "checkpoints": copied.checkpoints,
        "writes": copied.writes,
    }
    if as_json:
        sys.stdout.write(json.dumps(summary) + "\n")
        return
    rows = ", ".join(f"{count:,} {table}" for table, count in copied.rows.items())
    out.print(
        f"copied {shown(source_db)} into {shown(target_db)}: {rows}; {copied.threads:,} threads with "
        f"{copied.checkpoints:,} checkpoints and {copied.writes:,} writes"
    )
