"""Which runs of a database are damaged: rollouts missing, altered or unreadable, run rows altered.

A run's first `done` iterations (those its checkpoint, or its evaluation problem, counts as done) must each
have their rollouts stored: as many as the iteration recorded (``iteration_rollouts``), with their ids,
exactly one chosen (rank 0), every row matching its seal (`knowledge_flow.persistence.seals`). Rows are
matched by (iteration, index), never by position. Checking reads the stored values raw: nothing is
decompressed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table
from sqlalchemy.exc import DBAPIError

from knowledge_flow.persistence.files import database_problem
from knowledge_flow.persistence.rows import RolloutRow, RunRow
from knowledge_flow.persistence.seals import StoreDamaged, check_seal, select_raw, table_of

if TYPE_CHECKING:
    from knowledge_flow.persistence.store import RolloutStore

__all__ = ["RunDamage", "StoreDamaged", "describe_iterations", "rollout_damage", "run_rows"]

#: Runs per query (within SQLite's limit on bound parameters).
CHUNK = 500


@dataclass
class RunDamage:
    """What is wrong with one run's stored rows."""

    missing: set[int] = field(default_factory=set)
    """Iterations counted as done whose rollouts are not stored."""
    altered: set[int] = field(default_factory=set)
    """Iterations with a rollout that does not match its seal, a rollout missing among several, or no (or
    more than one) chosen rollout."""
    run_row: str | None = None
    """What is wrong with the run's own row (missing, altered)."""

    def __bool__(self) -> bool:
        return bool(self.missing or self.altered or self.run_row)

    def describe(self) -> str:
        parts = [self.run_row] if self.run_row else []
        if self.missing:
            parts.append(f"the rollouts of {describe_iterations(self.missing)} are missing")
        if self.altered:
            parts.append(f"the rollouts of {describe_iterations(self.altered)} were altered or are incomplete")
        return "; ".join(parts)


def describe_iterations(iterations: Iterable[int]) -> str:
    """``iteration 3`` or ``iterations 0-2, 5``."""
    ordered = sorted(set(iterations))
    spans: list[str] = []
    start = previous = ordered[0]
    for value in [*ordered[1:], None]:
        if value is not None and value == previous + 1:
            previous = value
            continue
        spans.append(str(start) if start == previous else f"{start}-{previous}")
        if value is not None:
            start = previous = value
    return f"iteration{'s' if len(ordered) > 1 else ''} {', '.join(spans)}"


def _query(store: RolloutStore, table: Table, run_ids: Sequence[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    try:
        with store.session() as session:
            connection = session.connection()
            for start in range(0, len(run_ids), CHUNK):
                chunk = list(run_ids[start : start + CHUNK])
                marks = ", ".join("?" * len(chunk))
                rows.extend(select_raw(connection, table, f"run_id IN ({marks})", chunk))
    except (DBAPIError, sqlite3.Error) as exc:
        raise StoreDamaged(f"its rows cannot be read: the file {database_problem(exc)}") from None
    return rows


def run_rows(store: RolloutStore, run_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The runs' own rows as stored, by run id."""
    return {row["run_id"]: row for row in _query(store, table_of(RunRow), run_ids)}


def rollout_damage(
    store: RolloutStore, run_ids: Sequence[str], done: Mapping[str, int] | None = None
) -> dict[str, RunDamage]:
    """The damaged runs among `run_ids` (absent when intact). `done`: per run, the iterations counted as done
    (a run not in it: as many as its row records)."""
    runs = run_rows(store, run_ids)
    by_iteration: dict[str, dict[int, list[dict[str, Any]]]] = {run_id: {} for run_id in run_ids}
    stray: dict[str, set[int]] = {}
    for row in _query(store, table_of(RolloutRow), run_ids):
        iteration = row["iteration"]
        if not isinstance(iteration, int) or row["run_id"] not in by_iteration:
            continue
        if row["id"] != f"{row['run_id']}:{iteration}:{row['index']}":
            stray.setdefault(row["run_id"], set()).add(iteration)
        by_iteration[row["run_id"]].setdefault(iteration, []).append(row)
    table = table_of(RolloutRow)
    damaged: dict[str, RunDamage] = {}
    for run_id in run_ids:
        damage = RunDamage(altered=set(stray.get(run_id, set())))
        run = runs.get(run_id)
        if run is None:
            damage.run_row = "its run row is missing"
        elif not check_seal(table_of(RunRow), run):
            damage.run_row = "its run row was altered"
        expected = (done or {}).get(run_id)
        if expected is None:
            expected = run["iterations_done"] if run is not None and isinstance(run["iterations_done"], int) else 0
        iterations = by_iteration[run_id]
        for iteration, rows in iterations.items():
            if not all(check_seal(table, row) and isinstance(row["index"], int) for row in rows):
                damage.altered.add(iteration)
                continue
            if iteration >= expected:  # in flight when the process stopped: may be partly stored
                continue
            declared = {row["iteration_rollouts"] for row in rows}
            indices = sorted(row["index"] for row in rows)
            chosen = sum(1 for row in rows if row["rank"] == 0)
            complete = declared == {None} or (len(declared) == 1 and indices == list(range(declared.pop() or 0)))
            if not complete or chosen != 1:
                damage.altered.add(iteration)
        damage.missing = {k for k in range(expected) if k not in iterations}
        if damage:
            damaged[run_id] = damage
    return damaged
