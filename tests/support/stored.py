"""Read what a database file really holds: checkpoint and write payloads, decompressed."""

from __future__ import annotations

import contextlib
import sqlite3
import zlib
from pathlib import Path
from typing import Any

from knowledge_flow.persistence.compression import SUFFIX, CompressingSerializer


def checkpoint_payloads(db: Path) -> list[bytes]:
    """The serialized bytes of every checkpoint and every pending write, as LangGraph's serializer wrote
    them before compression."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT type, checkpoint FROM checkpoints").fetchall()
        rows += conn.execute("SELECT type, value FROM writes WHERE value IS NOT NULL").fetchall()
    return [zlib.decompress(bytes(blob)) if (kind or "").endswith(SUFFIX) else bytes(blob) for kind, blob in rows]


def checkpoints_and_writes(db: Path) -> tuple[list[dict[str, Any]], list[tuple[str, Any]]]:
    """Every checkpoint (decoded) and every pending write as (channel, decoded value), oldest first."""
    serde = CompressingSerializer()
    with sqlite3.connect(db) as conn:
        checkpoints = [
            serde.loads_typed((kind, bytes(blob)))
            for kind, blob in conn.execute("SELECT type, checkpoint FROM checkpoints ORDER BY checkpoint_id")
        ]
        writes = [
            (channel, serde.loads_typed((kind, bytes(blob))))
            for channel, kind, blob in conn.execute(
                "SELECT channel, type, value FROM writes WHERE value IS NOT NULL ORDER BY checkpoint_id, task_id, idx"
            )
        ]
    return checkpoints, writes


def stored_bytes(db: Path) -> bytes:
    """Everything the database file's tables hold, value by value as bytes: texts as stored, blobs as stored
    and, when they are zlib-compressed (long texts, checkpoints), decompressed."""
    parts: list[bytes] = []
    with sqlite3.connect(db) as conn:
        conn.text_factory = bytes
        tables = [row[0].decode() for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"'):
                for value in row:
                    if isinstance(value, bytes):
                        parts.append(value)
                        with contextlib.suppress(zlib.error):
                            parts.append(zlib.decompress(value))
                    elif value is not None:
                        parts.append(str(value).encode())
    return b"\n".join(parts)
