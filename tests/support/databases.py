"""A test's database on either store: what `--db` gets, and raw SQL on it (as another program would read it)."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Database:
    kind: str
    """``sqlite`` or ``postgres``."""
    target: str
    """What ``--db`` (and `get_store`, `get_checkpointer`) gets: a file path or a ``postgresql://`` URL."""

    @property
    def password(self) -> str | None:
        return urlsplit(self.target).password if self.kind == "postgres" else None

    @property
    def path(self) -> Path:
        assert self.kind == "sqlite", "only an SQLite database is a file"
        return Path(self.target)

    def exists(self) -> bool:
        if self.kind == "sqlite":
            return self.path.exists()
        return bool(self.rows("SELECT count(*) FROM pg_tables WHERE tablename = 'kf_meta'")[0][0])

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Rows of one query (``?`` placeholders on SQLite, ``%s`` on PostgreSQL)."""
        if self.kind == "sqlite":
            with sqlite3.connect(self.target) as conn:
                return list(conn.execute(sql, params))
        import psycopg

        with psycopg.connect(self.target, autocommit=True) as conn:
            return [tuple(row) for row in conn.execute(sql, params)]

    def execute(self, sql: str) -> None:
        if self.kind == "sqlite":
            with sqlite3.connect(self.target) as conn:
                conn.execute(sql)
            return
        import psycopg

        with psycopg.connect(self.target, autocommit=True) as conn:
            conn.execute(sql)

    def tables(self) -> set[str]:
        if self.kind == "sqlite":
            return {row[0] for row in self.rows("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return {row[0] for row in self.rows("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}

    def content(self) -> bytes:
        """Everything the database holds, as bytes to search (SQLite: the file and its WAL; PostgreSQL: every
        row of every table, as text)."""
        if self.kind == "sqlite":
            files = [self.path, self.path.with_name(self.path.name + "-wal")]
            return b"".join(path.read_bytes() for path in files if path.is_file())
        chunks = []
        for table in sorted(self.tables()):
            chunks += [str(row[0]).encode() for row in self.rows(f'SELECT t::text FROM "{table}" t')]
        return b"\n".join(chunks)

    def snapshot(self) -> bytes:
        """What must not change when the database is refused: the SQLite file (its WAL folded in first), or
        every row."""
        if self.kind == "sqlite":
            self.rows("PRAGMA wal_checkpoint(TRUNCATE)")
            return self.path.read_bytes()
        return self.content()

    def __str__(self) -> str:
        return self.target
