"""Read what a database file really holds: checkpoint and write payloads, decompressed."""

from __future__ import annotations

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
