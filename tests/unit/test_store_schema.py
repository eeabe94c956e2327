from __future__ import annotations

import pytest
from sqlalchemy import update

from knowledge_flow.persistence.damage import rollout_damage
from knowledge_flow.persistence.rows import RolloutRow
from knowledge_flow.persistence.seals import digest, sealed_columns, select_raw, table_of
from knowledge_flow.persistence.store import SCHEMA_VERSION, RolloutStore, SchemaError
from tests.support.databases import Database
from tests.unit.test_compression import LONG, rollout


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


def test_rows_sealed_before_the_workers_version_stay_intact_after_its_migration(database: Database) -> None:
    store = RolloutStore(database.target)
    store.create_run(run_id="run", thread_id="t", problem="p", params={}, base_url=None, package_version="0")
    for k, content in enumerate((LONG + "\\boxed{12}", "short \\boxed{3}")):
        row = rollout(f"run:{k}", content)
        row.id, row.rank = f"run:{k}:0", 0  # {run}:{iteration}:{index}, the chosen one
        store.add_rollout(row)
    assert rollout_damage(store, ["run"], {"run": 2}) == {}
    table = table_of(RolloutRow)
    later = ("worker", "parents_json")  # the columns of versions 8 and 9
    with store.session() as session:  # sealed as version 7 sealed them: over every column but the later ones
        for raw in select_raw(session.connection(), table, {"run_id": "run"}):
            v7_seal = digest(raw[column.key] for column in sealed_columns(table) if column.key not in later)
            session.execute(update(RolloutRow).where(RolloutRow.id == raw["id"]).values(seal=v7_seal, worker=None))
    store.close()
    # as version 7 wrote them: without the columns of the workers
    database.execute('ALTER TABLE kf_rollouts DROP COLUMN "worker"')
    database.execute('ALTER TABLE kf_rollouts DROP COLUMN "parents_json"')
    database.execute("ALTER TABLE kf_eval_items DROP COLUMN claimed_by")
    database.execute('ALTER TABLE kf_eval_items DROP COLUMN "worker"')
    database.execute("ALTER TABLE kf_leases DROP COLUMN timeout")
    database.execute("UPDATE kf_meta SET value = '7' WHERE key = 'schema_version'")
    store = RolloutStore(database.target)
    assert "worker" in columns(database, "kf_rollouts")
    assert rollout_damage(store, ["run"], {"run": 2}) == {}
    database.execute("UPDATE kf_rollouts SET worker = 'elsewhere:1' WHERE id = 'run:0:0'")  # the new column counts
    assert rollout_damage(store, ["run"], {"run": 2})["run"].altered == {0}
    database.execute("UPDATE kf_rollouts SET worker = NULL WHERE id = 'run:0:0'")
    database.execute("UPDATE kf_rollouts SET iteration_rollouts = 2 WHERE id = 'run:1:0'")  # still checked
    assert rollout_damage(store, ["run"], {"run": 2})["run"].altered == {1}
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


def test_rows_sealed_before_the_lineage_keep_their_seals_and_the_parents_are_sealed(database: Database) -> None:
    """Rows sealed before rollouts recorded what they aggregated still pass their check once the database
    gains ``parents_json``; a rollout's parents, when set, are under its seal."""
    from knowledge_flow.persistence.rows import utcnow

    def aggregating(rollout_id: str, parents: str | None) -> RolloutRow:
        index = int(rollout_id[-1])
        return RolloutRow(
            id=rollout_id,
            run_id="run",
            thread_id="t",
            iteration=0,
            index=index,
            rank=index,
            created_at=utcnow(),
            prompt_json="[]",
            content="\\boxed{3}",
            parents_json=parents,
        )

    store = RolloutStore(database.target)
    store.create_run(run_id="run", thread_id="t", problem="p", params={}, base_url=None, package_version="0")
    store.add_rollout(aggregating("run:0:0", None), 2)
    table = table_of(RolloutRow)
    with store.engine.connect() as connection:
        raw = select_raw(connection, table, {"id": "run:0:0"})[0]
    old_seal = digest(raw[c.key] for c in sealed_columns(table) if c.key != "parents_json")
    store.close()
    # the database as version 8 left it: its rollout sealed as version 8 sealed it
    database.execute('ALTER TABLE kf_rollouts DROP COLUMN "parents_json"')
    database.execute(f"UPDATE kf_rollouts SET seal = '{old_seal}' WHERE id = 'run:0:0'")
    database.execute("UPDATE kf_meta SET value = '8' WHERE key = 'schema_version'")
    store = RolloutStore(database.target)
    assert "parents_json" in columns(database, "kf_rollouts")
    store.add_rollout(aggregating("run:0:1", '["run:x:0"]'), 2)
    assert rollout_damage(store, ["run"], {"run": 1}) == {}
    database.execute("UPDATE kf_rollouts SET parents_json = '[\"run:x:1\"]' WHERE id = 'run:0:1'")
    assert "run" in rollout_damage(store, ["run"], {"run": 1})  # the lineage altered by hand is found out
    store.close()
