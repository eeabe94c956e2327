from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from knowledge_flow.persistence.store import SCHEMA_VERSION, RolloutStore, SchemaError


def columns(path: Path, table: str) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def test_version_1_database_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    RolloutStore(path).close()
    with sqlite3.connect(path) as conn:  # make it look like a version-1 file
        for column in ("temperature", "confidence", "rank"):
            conn.execute(f"ALTER TABLE kf_rollouts DROP COLUMN {column}")
        conn.execute("DROP TABLE kf_eval_items")
        conn.execute("DROP TABLE kf_evals")
        conn.execute("UPDATE kf_meta SET value = '1' WHERE key = 'schema_version'")
    assert "rank" not in columns(path, "kf_rollouts")
    store = RolloutStore(path)
    assert {"temperature", "confidence", "rank"} <= columns(path, "kf_rollouts")
    assert "eval_id" in columns(path, "kf_evals")
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM kf_meta").fetchone()[0] == str(SCHEMA_VERSION)
    store.close()


def test_newer_schema_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    RolloutStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE kf_meta SET value = '99' WHERE key = 'schema_version'")
        conn.execute("DROP TABLE kf_evals")
    with sqlite3.connect(path) as conn:  # fold the WAL into the file, so its bytes are the whole content
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = path.read_bytes()
    with pytest.raises(SchemaError, match="newer knowledge-flow"):
        RolloutStore(path)
    assert path.read_bytes() == before
    with sqlite3.connect(path) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "kf_evals" not in tables
