"""Copy runs and evaluations from one database to another (`kflow db copy`): SQLite <-> PostgreSQL, or any two.

Every knowledge-flow row (runs, rollouts with their texts, calls, prompt sets, evaluations and their problems)
and every checkpoint of their threads, with its pending writes, is copied as it is, so a copied run is shown,
reported and resumed as in the source. Workers' claims and leases are not copied. The rows go in one
transaction after the checkpoints; a copy that stopped half-way is finished by running it again (checkpoints
of threads the target has no run for are replaced).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from sqlalchemy import Table, insert, select
from sqlalchemy.engine import Connection

from knowledge_flow.persistence.leases import LeaseRow, fresh
from knowledge_flow.persistence.rows import Base, MetaRow, PromptSetRow, RunRow
from knowledge_flow.persistence.store import RolloutStore

BATCH = 500
#: Tables that belong to the database, not to its runs.
NOT_COPIED = (MetaRow.__tablename__, LeaseRow.__tablename__)
#: The evaluations' tables (`knowledge_flow.evaluation.rows`, part of every database's schema).
EVALS, PROBLEMS = "kf_evals", "kf_eval_items"


@dataclass
class Copied:
    """What a copy wrote: rows per table, threads and their checkpoints and writes."""

    rows: dict[str, int] = field(default_factory=dict)
    threads: int = 0
    checkpoints: int = 0
    writes: int = 0


def conflicts(source: RolloutStore, target: RolloutStore) -> list[str]:
    """Runs and evaluations of `source` that `target` already holds (a copy would mix them)."""
    evals = Base.metadata.tables[EVALS]
    found = []
    for key, what in ((RunRow.__table__.c.run_id, "run"), (evals.c.eval_id, "evaluation run")):
        with source.session() as session:
            ids = list(session.scalars(select(key)))
        for start in range(0, len(ids), BATCH):
            with target.session() as session:
                found += [
                    f"{what} {name}" for name in session.scalars(select(key).where(key.in_(ids[start : start + BATCH])))
                ]
    return found


def running(store: RolloutStore) -> LeaseRow | None:
    """A process that holds a run of `store` now (its heartbeat is fresh)."""
    with store.session() as session:
        return session.scalars(select(LeaseRow).where(fresh())).first()


def copy_database(
    source: RolloutStore,
    target: RolloutStore,
    source_checkpoints: BaseCheckpointSaver[Any],
    target_checkpoints: BaseCheckpointSaver[Any],
    progress: Callable[[str], None] = lambda _m: None,
) -> Copied:
    """Copy everything of `source` into `target` (ValueError when they share runs or evaluations)."""
    clash = conflicts(source, target)
    if clash:
        raise ValueError(f"the target already holds {', '.join(clash[:3])}" + (" and more" if len(clash) > 3 else ""))
    copied = Copied()
    threads = thread_ids(source)
    progress(f"copying the checkpoints of {len(threads)} threads")
    for thread in threads:
        checkpoints, writes = copy_thread(source_checkpoints, target_checkpoints, thread)
        copied.threads += 1
        copied.checkpoints += checkpoints
        copied.writes += writes
    tables = [table for table in Base.metadata.sorted_tables if table.name not in NOT_COPIED]
    with source.engine.connect() as reading, target.engine.begin() as writing:
        for table in tables:
            progress(f"copying {table.name}")
            copied.rows[table.name] = copy_table(reading, writing, table)
    return copied


def thread_ids(store: RolloutStore) -> list[str]:
    """The threads of the runs and evaluation problems of `store`."""
    with store.session() as session:
        runs = set(session.scalars(select(RunRow.thread_id)))
        problems = set(session.scalars(select(Base.metadata.tables[PROBLEMS].c.thread_id)))
    return sorted(runs | problems)


def copy_thread(source: BaseCheckpointSaver[Any], target: BaseCheckpointSaver[Any], thread_id: str) -> tuple[int, int]:
    """Every checkpoint of a thread, oldest first, with its parent and its pending writes; the counts."""
    base: RunnableConfig = {"configurable": {"thread_id": thread_id}}
    if target.get_tuple(base) is not None:
        target.delete_thread(thread_id)  # left by a copy that stopped: the runs' rows were not written
    tuples = list(source.list(base))
    tuples.reverse()
    writes = 0
    for item in tuples:
        configurable = item.config["configurable"]
        parent = dict(item.parent_config["configurable"]) if item.parent_config else {}
        config: Any = {
            "configurable": {"thread_id": thread_id, "checkpoint_ns": configurable.get("checkpoint_ns", ""), **parent}
        }
        stored = target.put(config, item.checkpoint, item.metadata, dict(item.checkpoint["channel_versions"]))
        by_task: dict[str, list[tuple[str, Any]]] = {}
        for task_id, channel, value in item.pending_writes or []:
            by_task.setdefault(task_id, []).append((channel, value))
        for task_id, task_writes in by_task.items():
            target.put_writes(stored, task_writes, task_id)
            writes += len(task_writes)
    return len(tuples), writes


def copy_table(reading: Connection, writing: Connection, table: Table) -> int:
    """All rows of `table`, in batches, texts decompressed on reading and compressed as the target stores them;
    prompt sets the target has are skipped (same digest, same text); problems arrive unclaimed."""
    known: set[str] = set()
    if table.name == PromptSetRow.__tablename__:
        known = set(writing.scalars(select(table.c.digest)))
    count = 0
    for batch in batches(reading, table):
        rows = [row for row in batch if table.name != PromptSetRow.__tablename__ or row["digest"] not in known]
        if table.name == PROBLEMS:
            rows = [{**row, "claimed_by": None} for row in rows]
        if rows:
            writing.execute(insert(table), rows)
            count += len(rows)
    return count


def batches(reading: Connection, table: Table) -> Iterator[Sequence[dict[str, Any]]]:
    result = reading.execution_options(stream_results=True, yield_per=BATCH).execute(select(table))
    for partition in result.mappings().partitions(BATCH):
        yield [dict(row) for row in partition]


__all__ = ["Copied", "conflicts", "copy_database", "copy_thread", "running", "thread_ids"]
