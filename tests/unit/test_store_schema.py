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


def test_version_7_rows_keep_their_seals_and_the_parents_are_sealed(tmp_path: Path) -> None:
    """Rows sealed by version 7 (before rollouts recorded what they aggregated) still pass their check once
    the file gains ``parents_json``; a rollout's parents, when set, are under its seal."""
    from knowledge_flow.persistence.damage import rollout_damage
    from knowledge_flow.persistence.rows import RolloutRow, utcnow
    from knowledge_flow.persistence.seals import digest, sealed_columns, select_raw, table_of

    def rollout(rollout_id: str, parents: str | None) -> RolloutRow:
        return RolloutRow(
            id=rollout_id,
            run_id="run",
            thread_id="t",
            iteration=0,
            index=int(rollout_id[-1]),
            rank=int(rollout_id[-1]),
            created_at=utcnow(),
            prompt_json="[]",
            content="\\boxed{3}",
            parents_json=parents,
        )

    path = tmp_path / "v7.db"
    store = RolloutStore(path)
    store.create_run(run_id="run", thread_id="t", problem="p", params={}, base_url=None, package_version="0")
    store.add_rollout(rollout("run:0:0", None), 2)
    store.add_rollout(rollout("run:0:1", '["run:x:0"]'), 2)
    table = table_of(RolloutRow)
    with store.engine.connect() as connection:
        raw = select_raw(connection, table, "id = ?", ["run:0:0"])[0]
    old_seal = digest(raw[c.key] for c in sealed_columns(table) if c.key != "parents_json")
    store.close()
    with sqlite3.connect(path) as conn:  # a version-7 file: its rollout sealed as version 7 sealed it
        conn.execute("DELETE FROM kf_rollouts WHERE id = 'run:0:1'")
        conn.execute("ALTER TABLE kf_rollouts DROP COLUMN parents_json")
        conn.execute("UPDATE kf_rollouts SET seal = ? WHERE id = 'run:0:0'", (old_seal,))
        conn.execute("UPDATE kf_meta SET value = '7' WHERE key = 'schema_version'")
    store = RolloutStore(path)
    assert "parents_json" in columns(path, "kf_rollouts")
    store.add_rollout(rollout("run:0:1", '["run:x:0"]'), 2)
    assert rollout_damage(store, ["run"], {"run": 1}) == {}
    with sqlite3.connect(path) as conn:  # the lineage altered by hand is found out
        conn.execute("UPDATE kf_rollouts SET parents_json = '[\"run:x:1\"]' WHERE id = 'run:0:1'")
    assert "run" in rollout_damage(store, ["run"], {"run": 1})
    store.close()
