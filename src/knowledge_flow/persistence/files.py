"""The database file: checked before sqlite (or anything else) opens it. Standard library only.

A file is looked into (its header read, its tables listed) once per process, before this process opens it
otherwise: SQLite's locks are POSIX locks, which belong to the process, and closing any other descriptor of
the file would drop the locks its open connections hold (other processes could then write under them).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from pathlib import Path

#: The database file when none is given (``KFLOW_DB`` overrides it).
DEFAULT_DB = "knowledge_flow.db"

SQLITE_MAGIC = b"SQLite format 3\x00"
#: Tables an SQLite file may hold besides knowledge-flow's own (``kf_*``): LangGraph's checkpoints.
CHECKPOINT_TABLES = frozenset({"checkpoints", "writes"})

_CHECKED: set[Path] = set()
_LOCK = threading.Lock()


def check_db_path(path: str | os.PathLike[str]) -> Path:
    """Refuse a database path that cannot be ours, before sqlite touches it: a folder, a missing folder, a
    FIFO or device, a file that is not SQLite (text, random bytes), a truncated or damaged SQLite file, an
    SQLite file of something else."""
    resolved = Path(path).expanduser()
    key = resolved.resolve()
    with _LOCK:
        if key in _CHECKED:
            return resolved
        if resolved.is_dir():
            raise ValueError(f"database path {str(resolved)!r} is a folder, not a file")
        if not resolved.parent.exists():
            raise ValueError(f"the folder of database {str(resolved)!r} does not exist")
        if resolved.exists() and not resolved.is_file():
            raise ValueError(f"database path {str(resolved)!r} is not a regular file (a device or a FIFO?)")
        if resolved.is_file() and resolved.stat().st_size > 0:
            with resolved.open("rb") as handle:
                header = handle.read(HEADER_BYTES)
            if header[: len(SQLITE_MAGIC)] != SQLITE_MAGIC:
                raise ValueError(f"{str(resolved)!r} is not an SQLite database; give another --db")
            check_length(resolved, header)
            try:
                foreign = foreign_tables(key)
            except sqlite3.Error as exc:
                raise ValueError(f"{str(resolved)!r} {database_problem(exc)}") from None
            if foreign:
                raise ValueError(
                    f"{str(resolved)!r} is an SQLite database of something else ({', '.join(foreign[:5])}); "
                    "give a new file or a knowledge-flow database"
                )
        _CHECKED.add(key)  # ours, or new (this process creates it)
    return resolved


HEADER_BYTES = 100


def check_length(path: Path, header: bytes) -> None:
    """Refuse a file shorter than its header says (cut off by a copy, a full disk): SQLite itself would only
    notice when it reads a missing page. The header's page count is valid when its "version valid for"
    number equals the change counter; a write-ahead log left behind may hold pages not yet copied back."""
    if len(header) < HEADER_BYTES:
        raise ValueError(f"{str(path)!r} is damaged: it is shorter than an SQLite header")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    valid = header[24:28] == header[92:96]
    wal = path.with_name(path.name + "-wal")
    if valid and pages and not (wal.is_file() and wal.stat().st_size > 0):
        expected = pages * page_size
        size = path.stat().st_size
        if size < expected:
            raise ValueError(
                f"{str(path)!r} is damaged: it holds {size:,} bytes of the {expected:,} its header records "
                "(cut off); restore it from a copy"
            )


def foreign_tables(path: Path) -> list[str]:
    """What makes an existing SQLite file not a knowledge-flow database (the file is only read): tables that
    neither knowledge-flow nor its checkpointer wrote, or a ``kf_meta`` table of another program; empty for a
    knowledge-flow database. An ordinary connection reads them: a read-only one could not recover the
    write-ahead log a killed process left behind. sqlite3.Error when the file is damaged."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "kf_meta" in names:
            columns = [row[1] for row in conn.execute("PRAGMA table_info(kf_meta)")]
            if columns != ["key", "value"]:
                return [f"its kf_meta table has columns {', '.join(map(str, columns))}"]
            versions = [row[0] for row in conn.execute("SELECT value FROM kf_meta WHERE key = 'schema_version'")]
            if len(versions) != 1 or not str(versions[0]).isdigit():
                return [f"its kf_meta table has no knowledge-flow schema version ({versions[:1]})"]
            return []
    tables = sorted(n for n in names if not n.startswith(("kf_", "sqlite_")) and n not in CHECKPOINT_TABLES)
    return [f"tables {', '.join(tables[:5])}"] if tables else []


#: SQLite's messages, and what they mean for the person who gave the file.
_PROBLEMS = (
    (("malformed", "not a database", "corrupt", "could not decode"), "is damaged ({reason}); restore it from a copy"),
    (("readonly", "read-only"), "cannot be written ({reason}); give a writable file and folder"),
    (("disk is full", "disk i/o error", "no space"), "could not be written ({reason}; a full disk?)"),
    (("unable to open",), "cannot be opened ({reason}); check the file and its folder"),
    (("locked", "busy"), "is locked by another process ({reason}); try again later"),
)


def database_problem(exc: BaseException) -> str:
    """What an SQLite error says about the file, as the end of a sentence that starts with the file's name."""
    reason = str(getattr(exc, "orig", None) or exc).splitlines()[0] if str(exc) else type(exc).__name__
    lowered = reason.lower()
    for needles, text in _PROBLEMS:
        if any(needle in lowered for needle in needles):
            return text.format(reason=reason)
    return f"failed: {reason}"


def probe_writable(path: Path) -> None:
    """Refuse a database this process cannot write (a read-only file, folder or medium), before anything is
    written: one statement that would write, rolled back."""
    if not (path.is_file() and path.stat().st_size > 0):
        return
    try:
        with contextlib.closing(sqlite3.connect(path, isolation_level=None, timeout=60)) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("UPDATE kf_meta SET value = value WHERE key = 'schema_version'")
            finally:
                conn.execute("ROLLBACK")
    except sqlite3.Error as exc:
        raise ValueError(f"database {str(path)!r} {database_problem(exc)}") from None
