"""The rollout store: runs, rollouts with their full texts, LLM calls outside the rollouts, how each iteration's
answer was selected, and prompt sets, in the SQLite file of the checkpoints (tables:
`knowledge_flow.persistence.rows`)."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import delete, inspect, select, update
from sqlalchemy.orm import Session, load_only, sessionmaker

from knowledge_flow.persistence.compression import unpack_confidences
from knowledge_flow.persistence.files import check_db_path
from knowledge_flow.persistence.rows import (
    SCHEMA_VERSION,
    Base,
    CallRow,
    MetaRow,
    PromptSetRow,
    RolloutRow,
    RunRow,
    SchemaError,
    SelectionRow,
    utcnow,
)
from knowledge_flow.persistence.schema import make_engine, open_schema
from knowledge_flow.persistence.seals import StoreDamaged, reseal, seal_row, table_of
from knowledge_flow.prompts import PromptSet, digest_of, from_source
from knowledge_flow.records import StoredRollout

__all__ = [
    "SCHEMA_VERSION",
    "CallRow",
    "MetaRow",
    "RolloutRow",
    "RolloutStore",
    "RunRow",
    "SchemaError",
    "SelectionRow",
    "StoreDamaged",
    "get_store",
    "utcnow",
]

R = TypeVar("R", bound=Base)


def sealed(row: R) -> R:
    """A new row with its seal set (`knowledge_flow.persistence.seals`)."""
    seal_row(row)
    return row


#: The "endpoint" of rollouts that failed before any replica answered.
NO_ENDPOINT = "(none: failed before a response)"


def endpoint_entry(url: str) -> dict[str, Any]:
    """The figures kept per endpoint (replica) or iteration, all zero."""
    return {
        "url": url,
        "rollouts": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "failed_rollouts": 0,
        "truncated_rollouts": 0,
        "retried_rollouts": 0,
    }


class RolloutStore:
    """Runs, rollouts, calls and prompt sets of one SQLite file (the evaluations' rows:
    `knowledge_flow.evaluation.rows.EvalStore`). Not LangGraph's `runtime.store`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(check_db_path(path))
        self.engine = make_engine(self.path)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        open_schema(self.engine, self.path, self._sessions)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    def close(self) -> None:
        self.engine.dispose()

    # runs -------------------------------------------------------------------------------------------
    def create_run(
        self,
        *,
        run_id: str,
        thread_id: str,
        problem: str,
        params: dict[str, Any],
        base_url: str | None,
        package_version: str,
    ) -> None:
        now = utcnow()
        with self.session() as session:
            if session.get(RunRow, run_id) is not None:
                return
            session.add(
                sealed(
                    RunRow(
                        run_id=run_id,
                        thread_id=thread_id,
                        created_at=now,
                        updated_at=now,
                        status="running",
                        problem=problem,
                        params_json=json.dumps(params, sort_keys=True),
                        base_url=base_url,
                        model=str(params.get("model", "")),
                        strategy=str(params.get("strategy", "")),
                        prompt_version=f"{params.get('prompt_set', '')}@{str(params.get('prompt_hash', ''))[:12]}",
                        package_version=package_version,
                        iterations_done=0,
                        final_answer=None,
                    )
                )
            )

    def update_row(self, model: type[Base], key: Any, what: str, values: dict[str, Any]) -> None:
        """Set `values` on the row of `model` with primary key `key`, in one UPDATE (the row's long texts
        are not decompressed); a sealed row is sealed again, after its old seal was checked (`seals.reseal`)."""
        mapper = inspect(model)
        if "updated_at" in mapper.columns:
            values = {**values, "updated_at": utcnow()}
        keys = key if isinstance(key, tuple) else (key,)
        match = [column == value for column, value in zip(mapper.primary_key, keys, strict=True)]
        with self.session() as session:
            primary = {str(column.key): value for column, value in zip(mapper.primary_key, keys, strict=True)}
            values = dict(values)
            reseal(session.connection(), table_of(model), primary, what, values)
            statement = update(model).where(*match).values(**values).execution_options(synchronize_session=False)
            result = session.execute(statement)
            if not result.rowcount:  # type: ignore[attr-defined]
                raise KeyError(f"no {what}")

    def update_run(self, run_id: str, **values: Any) -> None:
        self.update_row(RunRow, run_id, f"run {run_id!r}", values)

    def get_run(self, run_id: str) -> RunRow | None:
        with self.session() as session:
            return session.get(RunRow, run_id)

    def latest_run(self, thread_id: str) -> RunRow | None:
        with self.session() as session:
            statement = select(RunRow).where(RunRow.thread_id == thread_id).order_by(RunRow.created_at.desc()).limit(1)
            return session.scalars(statement).first()

    def list_runs(self) -> Sequence[RunRow]:
        with self.session() as session:
            return session.scalars(select(RunRow).order_by(RunRow.created_at)).all()

    # prompt sets ------------------------------------------------------------------------------------
    def save_prompt_set(self, prompt_set: PromptSet) -> None:
        with self.session() as session:
            if session.get(PromptSetRow, prompt_set.digest) is None:
                session.add(
                    PromptSetRow(
                        digest=prompt_set.digest,
                        name=prompt_set.name,
                        source=prompt_set.source,
                        origin=prompt_set.origin,
                        created_at=utcnow(),
                    )
                )

    def prompt_set(self, digest: str) -> PromptSet:
        """The prompt set a run used, from its stored text (whose SHA-256 is its key: an altered text is
        refused, never rendered)."""
        with self.session() as session:
            row = session.get(PromptSetRow, digest)
            if row is None:
                raise KeyError(f"prompt set {digest[:12]} is not in {self.path}")
            if digest_of(row.source) != digest:
                raise StoreDamaged(f"the stored text of prompt set {row.name!r} ({digest[:12]}) was altered")
            return from_source(row.source, row.name)

    # rollouts ---------------------------------------------------------------------------------------
    def get_rollout(self, rollout_id: str) -> RolloutRow | None:
        with self.session() as session:
            return session.get(RolloutRow, rollout_id)

    def stored_rollouts(self, rollout_ids: Sequence[str]) -> set[str]:
        """Which of `rollout_ids` are stored (their texts are not read)."""
        with self.session() as session:
            return set(session.scalars(select(RolloutRow.id).where(RolloutRow.id.in_(rollout_ids))))

    def add_rollout(self, row: RolloutRow, count: int = 1) -> None:
        """Store a new rollout of an iteration that has `count` rollouts (thinkers), sealed."""
        row.iteration_rollouts = count
        with self.session() as session:
            session.add(sealed(row))

    def stored_texts(self, rollout_id: str) -> StoredRollout | None:
        row = self.get_rollout(rollout_id)
        if row is None:
            return None
        return StoredRollout(row.messages, row.prefill, row.content, row.reasoning)

    def best_rollout_id(self, run_id: str, iteration: int) -> str | None:
        with self.session() as session:
            statement = select(RolloutRow.id).where(
                RolloutRow.run_id == run_id, RolloutRow.iteration == iteration, RolloutRow.rank == 0
            )
            return session.scalars(statement).first()

    def delete_rollouts(self, run_id: str, *, from_iteration: int) -> int:
        """Remove the run's rollouts (and selections) of `from_iteration` on (to try those iterations again); how
        many rollouts."""
        with self.session() as session:
            session.execute(
                delete(SelectionRow)
                .where(SelectionRow.run_id == run_id, SelectionRow.iteration >= from_iteration)
                .execution_options(synchronize_session=False)
            )
            statement = delete(RolloutRow).where(RolloutRow.run_id == run_id, RolloutRow.iteration >= from_iteration)
            result = session.execute(statement.execution_options(synchronize_session=False))
            return int(result.rowcount)  # type: ignore[attr-defined]

    def update_rollout(self, rollout_id: str, **values: Any) -> None:
        self.update_row(RolloutRow, rollout_id, f"rollout {rollout_id!r}", values)

    def iteration_rollouts(self, run_id: str, iteration: int) -> Sequence[RolloutRow]:
        """One iteration's rollouts, by thinker."""
        with self.session() as session:
            statement = (
                select(RolloutRow)
                .where(RolloutRow.run_id == run_id, RolloutRow.iteration == iteration)
                .order_by(RolloutRow.index)
            )
            return session.scalars(statement).all()

    def token_confidences(self, rollout_id: str) -> list[float] | None:
        """A rollout's per-token confidences (DeepConf), when it had top log-probabilities."""

        with self.session() as session:
            blob = session.scalars(select(RolloutRow.token_confidence).where(RolloutRow.id == rollout_id)).first()
        return unpack_confidences(blob) if blob else None

    # calls outside the rollouts ---------------------------------------------------------------------
    def get_call(self, call_id: str) -> CallRow | None:
        with self.session() as session:
            return session.get(CallRow, call_id)

    def add_call(self, row: CallRow) -> None:
        with self.session() as session:
            session.add(sealed(row))

    def update_call(self, call_id: str, **values: Any) -> None:
        self.update_row(CallRow, call_id, f"call {call_id!r}", values)

    def calls(self, run_id: str) -> Sequence[CallRow]:
        with self.session() as session:
            statement = select(CallRow).where(CallRow.run_id == run_id).order_by(CallRow.iteration, CallRow.created_at)
            return session.scalars(statement).all()

    def rollouts(self, run_id: str) -> Sequence[RolloutRow]:
        with self.session() as session:
            statement = (
                select(RolloutRow).where(RolloutRow.run_id == run_id).order_by(RolloutRow.iteration, RolloutRow.index)
            )
            return session.scalars(statement).all()

    def runs_rollouts(
        self, run_ids: Sequence[str], *criteria: Any, only: Sequence[Any] = ()
    ) -> dict[str, list[RolloutRow]]:
        """Per run, its rollouts that match `criteria`, in iteration and thinker order; with `only`, just those
        columns are read (the texts are not)."""
        rows: dict[str, list[RolloutRow]] = {run_id: [] for run_id in run_ids}
        ordered = list(rows)
        with self.session() as session:
            for start in range(0, len(ordered), 500):  # within SQLite's limit on bound parameters
                statement = (
                    select(RolloutRow)
                    .where(RolloutRow.run_id.in_(ordered[start : start + 500]), *criteria)
                    .order_by(RolloutRow.run_id, RolloutRow.iteration, RolloutRow.index)
                )
                if only:
                    statement = statement.options(load_only(*only))
                for row in session.scalars(statement):
                    rows[row.run_id].append(row)
        return rows

    def chosen_rows(self, run_ids: Sequence[str]) -> dict[str, dict[int, RolloutRow]]:
        """Per run, each iteration's chosen rollout by iteration, texts included: the one its selection names
        (an earlier iteration's when TRT kept its previous best), else its rank-0 rollout. An iteration whose
        rows are missing is absent: callers match rows by iteration, never by position."""
        first = {
            (row.run_id, row.iteration): row
            for run_rows in self.runs_rollouts(run_ids, RolloutRow.rank == 0).values()
            for row in run_rows
        }
        rows: dict[str, dict[int, RolloutRow]] = {run_id: {} for run_id in run_ids}
        ordered = list(rows)
        named: dict[tuple[str, int], str] = {}
        by_id: dict[str, RolloutRow] = {}
        with self.session() as session:
            for start in range(0, len(ordered), 500):  # within SQLite's limit on bound parameters
                named |= {
                    (run_id, iteration): rollout_id
                    for run_id, iteration, rollout_id in session.execute(
                        select(SelectionRow.run_id, SelectionRow.iteration, SelectionRow.rollout_id).where(
                            SelectionRow.run_id.in_(ordered[start : start + 500])
                        )
                    )
                    if rollout_id is not None
                }
            wanted = sorted({rid for key, rid in named.items() if key not in first or first[key].id != rid})
            for at in range(0, len(wanted), 500):
                found = session.scalars(select(RolloutRow).where(RolloutRow.id.in_(wanted[at : at + 500])))
                by_id |= {row.id: row for row in found}
        for key in sorted(set(first) | set(named)):
            row = by_id.get(named.get(key, "")) or first.get(key)
            if row is not None:
                rows[key[0]][key[1]] = row
        return rows

    # selections -------------------------------------------------------------------------------------
    def record_selection(self, run_id: str, iteration: int, selection: Mapping[str, Any]) -> None:
        """Write how the iteration's answer was chosen (`records.Selection`); an iteration run again after a
        crash writes it again."""
        with self.session() as session:
            session.merge(
                SelectionRow(
                    id=f"{run_id}:{iteration}",
                    run_id=run_id,
                    iteration=iteration,
                    rule=str(selection["rule"]),
                    rollout_id=selection["rollout_id"],
                    answer=selection["answer"],
                    kept_previous=bool(selection.get("kept_previous")),
                    votes_json=json.dumps(selection["votes"], ensure_ascii=False),
                    agreement=float(selection["agreement"]),
                )
            )

    def selections(self, run_id: str) -> dict[int, SelectionRow]:
        """The run's recorded selections by iteration."""
        with self.session() as session:
            found = session.scalars(select(SelectionRow).where(SelectionRow.run_id == run_id))
            return {row.iteration: row for row in found}

    def rollout_stats(self, run_ids: Sequence[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Counted from the stored rollouts of the given runs (what a killed process sent is there too): per
        endpoint (replica) and per iteration, the rollouts, the failed ones, the ones cut off at the token
        limit, the retried ones, and the tokens."""
        endpoints: dict[str, dict[str, Any]] = {}
        iterations: dict[int, dict[str, Any]] = {}
        with self.session() as session:
            for chunk_start in range(0, len(run_ids), 500):
                chunk = list(run_ids[chunk_start : chunk_start + 500])
                statement = select(
                    RolloutRow.endpoint,
                    RolloutRow.iteration,
                    RolloutRow.prompt_tokens,
                    RolloutRow.completion_tokens,
                    RolloutRow.error,
                    RolloutRow.finish_reason,
                    RolloutRow.retries,
                ).where(RolloutRow.run_id.in_(chunk))
                for endpoint, iteration, prompt, completion, error, finish, retries in session.execute(statement):
                    url = endpoint or NO_ENDPOINT
                    for entry in (
                        endpoints.setdefault(url, endpoint_entry(url)),
                        iterations.setdefault(iteration, {"iteration": iteration, **endpoint_entry("")}),
                    ):
                        entry["rollouts"] += 1
                        entry["failed_rollouts"] += int(error is not None)
                        entry["truncated_rollouts"] += int(finish == "length")
                        entry["retried_rollouts"] += int(bool(retries))
                        entry["prompt_tokens"] += prompt
                        entry["completion_tokens"] += completion
        for entry in iterations.values():
            del entry["url"]
        return sorted(endpoints.values(), key=lambda e: str(e["url"])), [iterations[k] for k in sorted(iterations)]


_STORES: dict[str, RolloutStore] = {}
_STORES_LOCK = threading.Lock()


def get_store(path: str | os.PathLike[str]) -> RolloutStore:
    """One `RolloutStore` (engine, connection pool) per database file and process."""
    key = str(Path(path).expanduser().resolve())
    with _STORES_LOCK:
        store = _STORES.get(key)
        if store is None:
            store = RolloutStore(key)  # checks the file (`check_db_path`) once
            _STORES[key] = store
        return store
