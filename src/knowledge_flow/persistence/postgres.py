"""PostgreSQL as the shared store: the rollout store's engine (SQLAlchemy, psycopg 3), LangGraph's Postgres
checkpointer (compressed like the SQLite one), the check before anything is written, and the lock that lets
many workers open one database at once.

Needs the ``postgres`` extra (``pip install 'knowledge-flow[postgres]'``); SQLite needs none of this.
The database holds the same tables as an SQLite file (``kf_*`` and LangGraph's ``checkpoint*``), in the
connection's current schema (``?options=-csearch_path=NAME`` in the URL picks another).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import CreateColumn

from knowledge_flow.persistence.compression import CompressingSerializer
from knowledge_flow.persistence.urls import check_url, libpq_url, redact, shown, sqlalchemy_url

#: LangGraph's tables in a knowledge-flow database (its Postgres checkpointer's).
CHECKPOINT_TABLES = frozenset({"checkpoints", "checkpoint_blobs", "checkpoint_writes", "checkpoint_migrations"})
#: The advisory lock held while a process creates or migrates the tables (workers start at once).
SCHEMA_LOCK = 0x6B666C6F77
CONNECT_TIMEOUT_S = 30
#: Connections of one process's rollout store (its threads wait for one beyond that).
POOL_SIZE = 5
POOL_OVERFLOW = 5
POOL_TIMEOUT_S = 600.0
#: Seconds between tries of the schema lock.
LOCK_POLL_S = 0.2

_CHECKED: set[str] = set()
_LOCK = threading.Lock()


def missing_driver() -> ValueError:
    return ValueError("a postgresql:// database needs the postgres extra: pip install 'knowledge-flow[postgres]'")


def failure(url: str, exc: BaseException) -> ValueError:
    """One line saying why a database could not be opened (the password masked)."""
    reason = " ".join(str(getattr(exc, "orig", None) or exc).split()) or type(exc).__name__
    reason = reason.split(" (Background on this error", 1)[0]
    return ValueError(redact(f"cannot open database {shown(url)}: {reason}"))


def check_db_url(url: str) -> str:
    """Refuse a database that cannot be ours before anything is written to it: one that cannot be reached, or
    one holding tables of something else. Checked once per process; returns the normalised URL."""
    url = check_url(url)
    with _LOCK:
        if url in _CHECKED:
            return url
        try:
            import psycopg
        except ImportError:
            raise missing_driver() from None
        try:
            with psycopg.connect(libpq_url(url), connect_timeout=CONNECT_TIMEOUT_S) as conn:
                rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
                names = {str(row[0]) for row in rows}
        except psycopg.Error as exc:
            raise failure(url, exc) from None
        if "kf_meta" not in names:
            foreign = sorted(n for n in names if not n.startswith("kf_") and n not in CHECKPOINT_TABLES)
            if foreign:
                raise ValueError(
                    f"{shown(url)} is a PostgreSQL database of something else (tables {', '.join(foreign[:5])}); "
                    "give a new database or a knowledge-flow one"
                )
        _CHECKED.add(url)
    return url


def has_schema(url: str) -> bool:
    """Whether the database holds knowledge-flow's tables (it was opened by knowledge-flow before)."""
    import psycopg

    try:
        with psycopg.connect(libpq_url(url), connect_timeout=CONNECT_TIMEOUT_S) as conn:
            found = conn.execute("SELECT to_regclass('kf_meta') IS NOT NULL").fetchone()
    except psycopg.Error as exc:
        raise failure(url, exc) from None
    return bool(found and found[0])


def make_pg_engine(url: str) -> Engine:
    """The rollout store's engine: a small pool whose connections are checked before use (a server restart
    or a dropped connection is survived), strings stored NUL-safe."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise missing_driver() from None
    engine = create_engine(
        sqlalchemy_url(url),
        pool_size=POOL_SIZE,
        max_overflow=POOL_OVERFLOW,
        pool_timeout=POOL_TIMEOUT_S,
        pool_pre_ping=True,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_S},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        register_nul_safe_strings(dbapi_connection)

    return engine


def register_nul_safe_strings(connection: Any) -> None:
    """PostgreSQL text cannot hold NUL characters (an endpoint can send them): they are stored as U+FFFD."""
    from psycopg.types.string import StrBinaryDumper, StrDumperUnknown

    class Text(StrDumperUnknown):
        def dump(self, obj: str) -> Any:
            return super().dump(obj.replace("\x00", "\ufffd"))

    class Binary(StrBinaryDumper):
        def dump(self, obj: str) -> Any:
            return super().dump(obj.replace("\x00", "\ufffd"))

    connection.adapters.register_dumper(str, Binary)
    connection.adapters.register_dumper(str, Text)


@contextmanager
def schema_lock(engine: Engine) -> Iterator[None]:
    """Hold the database's schema lock (an advisory lock: other processes opening it wait).

    The lock is tried, not waited for inside a statement: LangGraph's setup creates indexes concurrently, which
    waits for every running transaction, so a process blocked in a lock request would deadlock with it."""
    with engine.connect() as connection:
        while not connection.exec_driver_sql(f"SELECT pg_try_advisory_lock({SCHEMA_LOCK})").scalar():
            connection.rollback()
            time.sleep(LOCK_POLL_S)
        connection.commit()
        try:
            yield
        finally:
            connection.exec_driver_sql(f"SELECT pg_advisory_unlock({SCHEMA_LOCK})")
            connection.commit()


_LENGTH = re.compile(r"\bVARCHAR\(\d+\)")


@compiles(CreateColumn, "postgresql")
def _unbounded_strings(element: CreateColumn, compiler: Any, **kw: Any) -> str:
    """Our string columns are unbounded on PostgreSQL, as on SQLite (which ignores lengths): a long thread id,
    model name or server-sent finish reason is stored, not refused."""
    text: str = compiler.visit_create_column(element, **kw)
    from knowledge_flow.persistence.rows import Base

    table = element.element.table
    if table is not None and table.metadata is Base.metadata:
        text = _LENGTH.sub("VARCHAR", text, count=1)
    return text


def checkpoints_current(conn: Any, migrations: int) -> bool:
    """Whether LangGraph's checkpoint tables are set up to its latest migration (nothing to lock then)."""
    row = conn.execute("SELECT to_regclass('checkpoint_migrations') IS NOT NULL AS present").fetchone()
    if not row["present"]:
        return False
    latest = conn.execute("SELECT max(v) AS v FROM checkpoint_migrations").fetchone()["v"]
    return latest is not None and int(latest) >= migrations - 1


def open_checkpointer(url: str, max_size: int = 2) -> Any:
    """A connection pool for LangGraph's Postgres saver (the settings it requires), the checkpoint tables set
    up (under the schema lock)."""
    try:
        from psycopg.rows import dict_row
        from psycopg_pool import ConnectionPool
    except ImportError:
        raise missing_driver() from None
    import psycopg

    url = check_db_url(url)
    kwargs = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}
    pool: Any = ConnectionPool(
        libpq_url(url), min_size=1, max_size=max_size, kwargs=kwargs, open=False, name="kflow-checkpoints"
    )
    try:
        pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
    except Exception as exc:
        pool.close()
        raise failure(url, exc) from None
    try:
        with pool.connection() as conn:
            from langgraph.checkpoint.postgres import PostgresSaver

            if not checkpoints_current(conn, len(PostgresSaver.MIGRATIONS)):
                while not conn.execute(f"SELECT pg_try_advisory_lock({SCHEMA_LOCK}) AS locked").fetchone()["locked"]:
                    time.sleep(LOCK_POLL_S)  # not inside a statement (see `schema_lock`)
                try:
                    PostgresSaver(conn, serde=CompressingSerializer()).setup()
                finally:
                    conn.execute(f"SELECT pg_advisory_unlock({SCHEMA_LOCK})")
    except psycopg.Error as exc:
        pool.close()
        raise failure(url, exc) from None
    return pool


__all__ = ["CHECKPOINT_TABLES", "check_db_url", "has_schema", "make_pg_engine", "open_checkpointer", "schema_lock"]
