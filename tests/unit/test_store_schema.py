from __future__ import annotations

import pytest

from knowledge_flow.persistence.store import SCHEMA_VERSION, RolloutStore, SchemaError
from tests.support.databases import Database


def columns(database: Database, table: str) -> set[str]:
    if database.kind == "sqlite":
        return {row[1] for row in database.rows(f"PRAGMA table_info({table})")}
    sql = "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = %s"
    return {row[0] for row in database.rows(sql, table)}


def test_version_1_database_is_migrated(database: Database) -> None:
    RolloutStore(database.target).close()
    # make it look like a version-1 database
    for column in ("temperature", "confidence", "rank", "worker"):
        database.execute(f'ALTER TABLE kf_rollouts DROP COLUMN "{column}"')
    database.execute("DROP TABLE kf_eval_items")
    database.execute("DROP TABLE kf_evals")
    database.execute("ALTER TABLE kf_leases DROP COLUMN timeout")
    database.execute("UPDATE kf_meta SET value = '1' WHERE key = 'schema_version'")
    assert "rank" not in columns(database, "kf_rollouts")
    store = RolloutStore(database.target)
    assert {"temperature", "confidence", "rank", "worker"} <= columns(database, "kf_rollouts")
    assert {"eval_id", "claimed_by", "worker"} <= columns(database, "kf_evals") | columns(database, "kf_eval_items")
    assert "timeout" in columns(database, "kf_leases")
    assert database.rows("SELECT value FROM kf_meta") == [(str(SCHEMA_VERSION),)]
    store.close()


def test_newer_schema_is_refused_and_left_untouched(database: Database) -> None:
    RolloutStore(database.target).close()
    database.execute("UPDATE kf_meta SET value = '99' WHERE key = 'schema_version'")
    database.execute("DROP TABLE kf_eval_items")
    database.execute("DROP TABLE kf_evals")
    before = database.snapshot()
    with pytest.raises(SchemaError, match="newer knowledge-flow"):
        RolloutStore(database.target)
    assert database.snapshot() == before
    assert "kf_evals" not in database.tables()
