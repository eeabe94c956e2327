"""Opening a database: the engine (SQLite: WAL, busy timeout, write transactions that take the lock up front;
PostgreSQL: `knowledge_flow.persistence.postgres`), the schema version check, and the migration of older
databases (new tables and columns)."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterable, Iterator
from typing import Any

from sqlalchemy import Engine, Table, create_engine, event, inspect
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.schema import CreateColumn

from knowledge_flow.persistence.checkpointer import BUSY_TIMEOUT_S
from knowledge_flow.persistence.rows import SCHEMA_VERSION, Base, MetaRow, SchemaError
from knowledge_flow.persistence.urls import is_postgres

#: The modules whose tables belong to the schema besides `persistence.rows`: every file holds them all, so a
#: database opened by any command can be used by every other.
TABLE_MODULES = ("knowledge_flow.persistence.leases", "knowledge_flow.evaluation.rows")


def make_engine(path: str) -> Engine:
    if is_postgres(path):
        from knowledge_flow.persistence.postgres import make_pg_engine

        return make_pg_engine(path)
    engine = create_engine(
        f"sqlite:///{path}",
        connect_args={"timeout": BUSY_TIMEOUT_S, "check_same_thread": False},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # let SQLAlchemy's "begin" event below open transactions
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Take the write lock up front: a deferred transaction that upgrades to a write while another
        # process writes fails at once with "database is locked", whatever the busy timeout.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def add_columns(session: Session, tables: Iterable[Table]) -> None:
    """Add the columns of `tables` an older database lacks (all are nullable, so old rows stay valid)."""
    connection = session.connection()
    inspector = inspect(connection)
    for table in tables:
        existing = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in existing:
                definition = CreateColumn(column).compile(dialect=connection.dialect)
                connection.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {definition}")


@contextlib.contextmanager
def schema_lock(engine: Engine) -> Iterator[None]:
    """PostgreSQL: hold the database's schema lock while creating or migrating (workers open it at once); an
    SQLite file is locked by its write transactions."""
    if engine.dialect.name != "postgresql":
        yield
        return
    from knowledge_flow.persistence.postgres import schema_lock as lock

    with lock(engine):
        yield


def open_schema(engine: Engine, path: str, sessions: sessionmaker[Session]) -> None:
    """Refuse a file from a newer version; create what is missing; migrate an older file to `SCHEMA_VERSION`."""
    with sessions.begin() as session:
        tables = set(inspect(session.connection()).get_table_names())
        if MetaRow.__tablename__ in tables:
            row = session.get(MetaRow, "schema_version")
            if row is not None and int(row.value) > SCHEMA_VERSION:
                raise SchemaError(
                    f"{path} was written by a newer knowledge-flow (schema {row.value}, this version "
                    f"reads up to {SCHEMA_VERSION}); upgrade knowledge-flow to open it"
                )
    for module in TABLE_MODULES:  # their tables are part of the one schema
        importlib.import_module(module)
    Base.metadata.create_all(engine)
    with sessions.begin() as session:
        row = session.get(MetaRow, "schema_version")
        if row is None:
            session.add(MetaRow(key="schema_version", value=str(SCHEMA_VERSION)))
        elif int(row.value) < SCHEMA_VERSION:
            add_columns(session, Base.metadata.sorted_tables)
            row.value = str(SCHEMA_VERSION)


__all__ = ["TABLE_MODULES", "make_engine", "open_schema", "schema_lock"]
