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
    file that is not SQLite (text, random bytes), an SQLite file of something else."""
    resolved = Path(path).expanduser()
    key = resolved.resolve()
    with _LOCK:
        if key in _CHECKED:
            return resolved
        if resolved.is_dir():
            raise ValueError(f"database path {str(resolved)!r} is a folder, not a file")
        if not resolved.parent.exists():
            raise ValueError(f"the folder of database {str(resolved)!r} does not exist")
        if resolved.is_file() and resolved.stat().st_size > 0:
            with resolved.open("rb") as handle:
                if handle.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:
                    raise ValueError(f"{str(resolved)!r} is not an SQLite database; give another --db")
            foreign = foreign_tables(key)
            if foreign:
                raise ValueError(
                    f"{str(resolved)!r} is an SQLite database of something else (tables "
                    f"{', '.join(foreign[:5])}); give a new file or a knowledge-flow database"
                )
        _CHECKED.add(key)  # ours, or new (this process creates it)
    return resolved


def foreign_tables(path: Path) -> list[str]:
    """Tables of an existing SQLite file that neither knowledge-flow nor its checkpointer wrote (the file is
    only read); empty for a knowledge-flow database. An ordinary connection reads them: a read-only one could
    not recover the write-ahead log a killed process left behind."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "kf_meta" in names:
        return []
    return sorted(n for n in names if not n.startswith(("kf_", "sqlite_")) and n not in CHECKPOINT_TABLES)
