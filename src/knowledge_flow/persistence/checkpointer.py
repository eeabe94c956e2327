"""The checkpointers: LangGraph's SQLite saver (opened lazily, WAL mode, busy timeout) and, for a
``postgresql://`` database, its Postgres saver (`knowledge_flow.persistence.pg_saver`); `get_checkpointer`
picks one. Both store checkpoints compressed, with integer channel versions."""

from __future__ import annotations

import os
import sqlite3
import threading
from typing import TYPE_CHECKING, Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite import SqliteSaver

from knowledge_flow.persistence.compression import CompressingSerializer
from knowledge_flow.persistence.files import DEFAULT_DB, check_db_path
from knowledge_flow.persistence.urls import is_postgres

if TYPE_CHECKING:
    from knowledge_flow.persistence.pg_saver import PostgresCheckpointer

BUSY_TIMEOUT_S = 60.0


def connect(path: str | os.PathLike[str], timeout: float = BUSY_TIMEOUT_S) -> sqlite3.Connection:
    conn = sqlite3.connect(str(check_db_path(path)), check_same_thread=False, timeout=timeout)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


class IntegerVersions:
    """Integer channel versions (LangGraph's own default) instead of the savers' 50-character strings.

    Every checkpoint stores the version of every channel; with short versions a checkpoint is about half
    as big. A thread first written with string versions keeps them, so versions never mix types (a thread
    copied between stores continues with the versions it has).
    """

    def get_next_version(self, current: str | int | None, channel: None) -> Any:
        if isinstance(current, str):
            return super().get_next_version(current, channel)  # type: ignore[misc]
        return (current or 0) + 1


class SqliteCheckpointer(IntegerVersions, SqliteSaver):
    """A `SqliteSaver` that opens its file on first use.

    The path is given, or read from ``KFLOW_DB`` at first use, so importing the package never creates a
    file. Checkpoints and writes are stored compressed (`CompressingSerializer`). Safe for many threads of
    one process (the saver serialises access with its lock).
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, timeout: float = BUSY_TIMEOUT_S) -> None:
        BaseCheckpointSaver.__init__(self, serde=CompressingSerializer())
        self.jsonplus_serde = JsonPlusSerializer()
        self.is_setup = False
        self.lock = threading.Lock()
        self._path = path
        self._timeout = timeout
        self._conn: sqlite3.Connection | None = None
        self._open_lock = threading.Lock()

    @property
    def path(self) -> str:
        return str(self._path or os.environ.get("KFLOW_DB") or DEFAULT_DB)

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            with self._open_lock:
                if self._conn is None:
                    self._conn = connect(self.path, self._timeout)
        return self._conn

    @conn.setter
    def conn(self, value: sqlite3.Connection) -> None:
        self._conn = value

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
            self.is_setup = False


def get_checkpointer(target: str | os.PathLike[str] | None = None) -> SqliteCheckpointer | PostgresCheckpointer:
    """The checkpointer of a database: LangGraph's Postgres saver for a ``postgresql://`` URL, else the SQLite
    saver of a file; both open on first use. None: ``KFLOW_DB`` (for SQLite read at first use)."""
    name = str(target) if target is not None else os.environ.get("KFLOW_DB")
    if name is not None and is_postgres(name):
        try:
            from knowledge_flow.persistence.pg_saver import PostgresCheckpointer
        except ImportError:
            from knowledge_flow.persistence.postgres import missing_driver

            raise missing_driver() from None
        return PostgresCheckpointer(name)
    return SqliteCheckpointer(target)
