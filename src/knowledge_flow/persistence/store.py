"""The rollout store (SQLAlchemy 2): runs and rollouts with their full texts, next to the checkpoints.

Tables (in the same SQLite file as the LangGraph checkpoints):

- ``kf_meta``: key/value, holds ``schema_version``.
- ``kf_runs``: one row per run (a thread can hold several runs, one after another).
- ``kf_rollouts``: one row per rollout: the full prompt, the full output and reasoning text, parsed fields,
  token usage, latency and finish reason. Long texts are stored compressed (read them through the store).
  Its id is ``{run_id}:{iteration}:{index}``, so a rollout whose
  response was received is found again after a crash and never requested twice. With log-probabilities it
  also holds DeepConf's trace measures (``conf_*``), its per-token confidences (packed float16,
  compressed) and, for a trace kept out of votes, why (``stop_reason``).
- ``kf_calls``: LLM calls outside the rollouts (TRT's planning, reflection and verifier calls), with their
  prompt, output and what was made of it; id ``{run_id}:{iteration}:{kind}``, so a stored call is never
  requested twice either.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Engine,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    create_engine,
    delete,
    event,
    inspect,
    select,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from knowledge_flow.persistence.checkpointer import BUSY_TIMEOUT_S
from knowledge_flow.persistence.compression import CompressedText
from knowledge_flow.persistence.files import check_db_path
from knowledge_flow.prompts import PromptSet, from_source
from knowledge_flow.strategies.base import StoredRollout

SCHEMA_VERSION = 5
"""1: runs and rollouts. 2: evaluation tables; rollouts gain temperature, confidence, rank (thinkers) and
endpoint (replicas). 3: long texts (prompt, output, reasoning, summary) and checkpoints are stored compressed,
and the graph's append-only lists are delta channels (each item written once); rows and checkpoints written
before stay readable. 4: prompt sets (``kf_prompt_sets``); rollouts gain the request path, prefill, budgets
(requested and sent), counted prompt tokens and what was parsed; runs gain what the endpoint served. 5: calls
outside the rollouts (``kf_calls``: TRT planning, reflection, verifier); rollouts gain the TRT strategy they
followed, DeepConf measures (tokens, mean, lowest, bottom10, tail, window), the online threshold in force,
the stop reason of a trace kept out of votes, the per-token confidences and the requests sent again
(``retries``); runs gain DeepConf's threshold."""


class SchemaError(RuntimeError):
    """The database was written by a newer version of knowledge-flow."""


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Base(DeclarativeBase):
    pass


class MetaRow(Base):
    __tablename__ = "kf_meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class RunRow(Base):
    __tablename__ = "kf_runs"
    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    thread_id: Mapped[str] = mapped_column(String(256), index=True)
    created_at: Mapped[str] = mapped_column(String(40))
    updated_at: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(16))
    problem: Mapped[str] = mapped_column(Text)
    params_json: Mapped[str] = mapped_column(Text)
    base_url: Mapped[str | None] = mapped_column(Text)
    model: Mapped[str] = mapped_column(String(256))
    strategy: Mapped[str] = mapped_column(String(64))
    prompt_version: Mapped[str] = mapped_column(String(64))
    package_version: Mapped[str] = mapped_column(String(64))
    iterations_done: Mapped[int] = mapped_column(Integer, default=0)
    final_answer: Mapped[str | None] = mapped_column(Text)
    served_json: Mapped[str | None] = mapped_column(Text)
    """What the endpoint served: model name, context length, server kind, how tokens were counted."""
    confidence_threshold: Mapped[float | None] = mapped_column(Float)
    """deepconf: the online threshold the warm-up wave set."""

    @property
    def params(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.params_json)
        return value

    @property
    def served(self) -> dict[str, Any] | None:
        return json.loads(self.served_json) if self.served_json else None


class PromptSetRow(Base):
    """The text of each prompt set a run used, by its SHA-256 (a resumed run renders exactly the same)."""

    __tablename__ = "kf_prompt_sets"
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(256))
    source: Mapped[str] = mapped_column(CompressedText)
    origin: Mapped[str] = mapped_column(Text)
    created_at: Mapped[str] = mapped_column(String(40))


class RolloutRow(Base):
    __tablename__ = "kf_rollouts"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("kf_runs.run_id"), index=True)
    thread_id: Mapped[str] = mapped_column(String(256), index=True)
    iteration: Mapped[int] = mapped_column(Integer)
    index: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[str] = mapped_column(String(40))
    prompt_json: Mapped[str] = mapped_column(CompressedText)
    content: Mapped[str] = mapped_column(CompressedText)
    reasoning: Mapped[str | None] = mapped_column(CompressedText)
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    latency_s: Mapped[float] = mapped_column(Float, default=0.0)
    answer: Mapped[str | None] = mapped_column(Text)
    summary: Mapped[str | None] = mapped_column(CompressedText)
    error_report: Mapped[str | None] = mapped_column(Text)
    parsed: Mapped[bool] = mapped_column(Boolean, default=False)
    changed: Mapped[bool | None] = mapped_column(Boolean)
    knowledge_added: Mapped[str | None] = mapped_column(Text)
    temperature: Mapped[float | None] = mapped_column(Float)
    confidence: Mapped[float | None] = mapped_column(Float)
    endpoint: Mapped[str | None] = mapped_column(Text)
    """The base URL (replica) that produced it."""
    error: Mapped[str | None] = mapped_column(Text)
    """Why the rollout failed (no usable response after retries); None when it succeeded."""
    rank: Mapped[int | None] = mapped_column(Integer)
    """Among the thinkers kept in its iteration (0 = the best, whose answer counts); None when not kept."""
    request_path: Mapped[str | None] = mapped_column(String(16))
    """chat, chat-continue (a prefill continued as the assistant's message) or completion (token ids)."""
    prefill: Mapped[str | None] = mapped_column(CompressedText)
    max_tokens_requested: Mapped[int | None] = mapped_column(Integer)
    max_tokens_sent: Mapped[int | None] = mapped_column(Integer)
    """The budget sent: the requested one fitted to the served context."""
    prompt_tokens_counted: Mapped[int | None] = mapped_column(Integer)
    """The prompt's length as counted before sending (the server's own count is `prompt_tokens`)."""
    parsed_from: Mapped[str | None] = mapped_column(String(16))
    """content, or reasoning when the final text was empty (a thinking block never closed)."""
    retries: Mapped[int | None] = mapped_column(Integer)
    """Requests sent again for its iteration: after an unusable response, or to another replica after one
    failed (the OpenAI client's own retries of a request are not counted)."""
    strategy_json: Mapped[str | None] = mapped_column(Text)
    """trt: the approach the thinker followed (key_technique, what_to_try)."""
    conf_tokens: Mapped[int | None] = mapped_column(Integer)
    """DeepConf: positions with top log-probabilities (the measures below are over them)."""
    conf_mean: Mapped[float | None] = mapped_column(Float)
    conf_lowest: Mapped[float | None] = mapped_column(Float)
    conf_bottom10: Mapped[float | None] = mapped_column(Float)
    conf_tail: Mapped[float | None] = mapped_column(Float)
    conf_window: Mapped[int | None] = mapped_column(Integer)
    conf_threshold: Mapped[float | None] = mapped_column(Float)
    """deepconf: the online threshold in force when the trace was sampled (None during the warm-up)."""
    stop_reason: Mapped[str | None] = mapped_column(String(32))
    """Why the trace is kept out of votes: gconf_threshold (stopped by the client mid-stream) or
    below_threshold (finished, its lowest group confidence under the threshold)."""
    token_confidence: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    """Per-token confidences, packed (`knowledge_flow.confidence.pack`); read with `Store.token_confidences`."""

    @property
    def strategy(self) -> dict[str, str] | None:
        return json.loads(self.strategy_json) if self.strategy_json else None

    @property
    def measures(self) -> dict[str, float] | None:
        """DeepConf measures (with `tokens`), or None when the rollout had no top log-probabilities."""
        if self.conf_lowest is None:
            return None
        return {
            "tokens": float(self.conf_tokens or 0),
            "mean": float(self.conf_mean or 0.0),
            "lowest": float(self.conf_lowest),
            "bottom10": float(self.conf_bottom10 or 0.0),
            "tail": float(self.conf_tail or 0.0),
        }

    @property
    def messages(self) -> list[dict[str, str]]:
        value: list[dict[str, str]] = json.loads(self.prompt_json)
        return value

    def text_to_parse(self) -> str:
        """The output as the answer is read from it: a prefill continued as the assistant's message comes
        first (rows written before the request path was recorded kept that prefill in the messages)."""
        if self.request_path == "chat-continue":
            return (self.prefill or "") + self.content
        messages = self.messages
        if self.request_path is None and messages and messages[-1]["role"] == "assistant":
            return messages[-1]["content"] + self.content
        return self.content


class CallRow(Base):
    """An LLM call outside the rollouts (TRT: ``plan``, ``reflect``, ``verify``)."""

    __tablename__ = "kf_calls"
    id: Mapped[str] = mapped_column(String(160), primary_key=True)
    """``{run_id}:{iteration}:{kind}``."""
    run_id: Mapped[str] = mapped_column(ForeignKey("kf_runs.run_id"), index=True)
    thread_id: Mapped[str] = mapped_column(String(256), index=True)
    iteration: Mapped[int] = mapped_column(Integer)
    """plan and reflect: the iteration they prepare; verify: the iteration whose candidates it ranks."""
    kind: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[str] = mapped_column(String(40))
    prompt_json: Mapped[str] = mapped_column(CompressedText)
    prefill: Mapped[str | None] = mapped_column(CompressedText)
    request_path: Mapped[str | None] = mapped_column(String(16))
    max_tokens_sent: Mapped[int | None] = mapped_column(Integer)
    content: Mapped[str] = mapped_column(CompressedText)
    reasoning: Mapped[str | None] = mapped_column(CompressedText)
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    latency_s: Mapped[float] = mapped_column(Float, default=0.0)
    temperature: Mapped[float | None] = mapped_column(Float)
    endpoint: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    """Why the call failed (no usable response after retries)."""
    outcome_json: Mapped[str | None] = mapped_column(Text)
    """What the call changed, as applied (small JSON)."""

    @property
    def messages(self) -> list[dict[str, str]]:
        value: list[dict[str, str]] = json.loads(self.prompt_json)
        return value

    @property
    def outcome(self) -> dict[str, Any] | None:
        return json.loads(self.outcome_json) if self.outcome_json else None


class EvalRow(Base):
    """One evaluation run (``kflow eval``): its manifest and status."""

    __tablename__ = "kf_evals"
    eval_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    created_at: Mapped[str] = mapped_column(String(40))
    updated_at: Mapped[str] = mapped_column(String(40))
    finished_at: Mapped[str | None] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(16))
    dataset: Mapped[str] = mapped_column(Text)
    dataset_hash: Mapped[str] = mapped_column(String(64))
    manifest_json: Mapped[str] = mapped_column(Text)

    @property
    def manifest(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.manifest_json)
        return value


class EvalItemRow(Base):
    """One problem of an evaluation run: its thread, gold answer and per-rollout results."""

    __tablename__ = "kf_eval_items"
    eval_id: Mapped[str] = mapped_column(ForeignKey("kf_evals.eval_id"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    problem_id: Mapped[str] = mapped_column(Text)
    thread_id: Mapped[str] = mapped_column(String(256))
    problem: Mapped[str] = mapped_column(Text)
    gold: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    error: Mapped[str | None] = mapped_column(Text)
    run_id: Mapped[str | None] = mapped_column(String(64))
    final_answer: Mapped[str | None] = mapped_column(Text)
    final_correct: Mapped[bool | None] = mapped_column(Boolean)
    answers_json: Mapped[str] = mapped_column(Text, default="[]")
    correct_json: Mapped[str] = mapped_column(Text, default="[]")
    prompt_tokens_json: Mapped[str] = mapped_column(Text, default="[]")
    completion_tokens_json: Mapped[str] = mapped_column(Text, default="[]")

    @property
    def answers(self) -> list[str | None]:
        value: list[str | None] = json.loads(self.answers_json)
        return value

    @property
    def correct(self) -> list[bool]:
        value: list[bool] = json.loads(self.correct_json)
        return value

    @property
    def prompt_tokens(self) -> list[int]:
        value: list[int] = json.loads(self.prompt_tokens_json)
        return value

    @property
    def completion_tokens(self) -> list[int]:
        value: list[int] = json.loads(self.completion_tokens_json)
        return value


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


def _engine(path: str) -> Engine:
    engine = create_engine(
        f"sqlite:///{path}",
        connect_args={"timeout": BUSY_TIMEOUT_S, "check_same_thread": False},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # let SQLAlchemy's "begin" event below open transactions
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Take the write lock up front: a deferred transaction that upgrades to a write while another
        # process writes fails at once with "database is locked", whatever the busy timeout.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def migrate(session: Session, version: int) -> None:
    """Bring an older database up to `SCHEMA_VERSION`: new tables are created by `create_all`; new columns
    of existing tables are added here (all are nullable, so old rows stay valid)."""
    connection = session.connection()
    inspector = inspect(connection)
    for table in Base.metadata.sorted_tables:
        existing = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in existing:
                kind = column.type.compile(dialect=connection.dialect)
                connection.exec_driver_sql(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}')


class Store:
    """Runs and rollouts of one SQLite file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(check_db_path(path))
        self.engine = _engine(self.path)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._setup()

    def _setup(self) -> None:
        with self.session() as session:
            tables = set(inspect(session.connection()).get_table_names())
            if MetaRow.__tablename__ in tables:
                row = session.get(MetaRow, "schema_version")
                if row is not None and int(row.value) > SCHEMA_VERSION:
                    raise SchemaError(
                        f"{self.path} was written by a newer knowledge-flow (schema {row.value}, this version "
                        f"reads up to {SCHEMA_VERSION}); upgrade knowledge-flow to open it"
                    )
        import knowledge_flow.persistence.leases  # noqa: F401  (its table is part of the schema)

        Base.metadata.create_all(self.engine)
        with self.session() as session:
            row = session.get(MetaRow, "schema_version")
            if row is None:
                session.add(MetaRow(key="schema_version", value=str(SCHEMA_VERSION)))
            elif int(row.value) < SCHEMA_VERSION:
                migrate(session, int(row.value))
                row.value = str(SCHEMA_VERSION)

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

    def _update(self, model: type[Base], key: Any, what: str, values: dict[str, Any]) -> None:
        """Set `values` on the row of `model` with primary key `key`, in one UPDATE (the row's long texts
        are neither read nor decompressed)."""
        mapper = inspect(model)
        if "updated_at" in mapper.columns:
            values = {**values, "updated_at": utcnow()}
        keys = key if isinstance(key, tuple) else (key,)
        match = [column == value for column, value in zip(mapper.primary_key, keys, strict=True)]
        with self.session() as session:
            statement = update(model).where(*match).values(**values).execution_options(synchronize_session=False)
            result = session.execute(statement)
            if not result.rowcount:  # type: ignore[attr-defined]
                raise KeyError(f"no {what}")

    def update_run(self, run_id: str, **values: Any) -> None:
        self._update(RunRow, run_id, f"run {run_id!r}", values)

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
        """The prompt set a run used, from its stored text."""
        with self.session() as session:
            row = session.get(PromptSetRow, digest)
            if row is None:
                raise KeyError(f"prompt set {digest[:12]} is not in {self.path}")
            return from_source(row.source, row.name)

    # rollouts ---------------------------------------------------------------------------------------
    def get_rollout(self, rollout_id: str) -> RolloutRow | None:
        with self.session() as session:
            return session.get(RolloutRow, rollout_id)

    def stored_rollouts(self, rollout_ids: Sequence[str]) -> set[str]:
        """Which of `rollout_ids` are stored (their texts are not read)."""
        with self.session() as session:
            return set(session.scalars(select(RolloutRow.id).where(RolloutRow.id.in_(rollout_ids))))

    def add_rollout(self, row: RolloutRow) -> None:
        with self.session() as session:
            session.add(row)

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
        """Remove the run's rollouts of `from_iteration` on (to try those iterations again); how many."""
        with self.session() as session:
            statement = delete(RolloutRow).where(RolloutRow.run_id == run_id, RolloutRow.iteration >= from_iteration)
            result = session.execute(statement.execution_options(synchronize_session=False))
            return int(result.rowcount)  # type: ignore[attr-defined]

    def update_rollout(self, rollout_id: str, **values: Any) -> None:
        self._update(RolloutRow, rollout_id, f"rollout {rollout_id!r}", values)

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
        from knowledge_flow.confidence import unpack

        with self.session() as session:
            blob = session.scalars(select(RolloutRow.token_confidence).where(RolloutRow.id == rollout_id)).first()
        return unpack(blob) if blob else None

    # calls outside the rollouts ---------------------------------------------------------------------
    def get_call(self, call_id: str) -> CallRow | None:
        with self.session() as session:
            return session.get(CallRow, call_id)

    def add_call(self, row: CallRow) -> None:
        with self.session() as session:
            session.add(row)

    def update_call(self, call_id: str, **values: Any) -> None:
        self._update(CallRow, call_id, f"call {call_id!r}", values)

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

    def chosen_rows(self, run_ids: Sequence[str]) -> dict[str, list[RolloutRow]]:
        """Per run, each iteration's chosen rollout (rank 0), in order, texts included."""
        rows: dict[str, list[RolloutRow]] = {run_id: [] for run_id in run_ids}
        ordered = list(rows)
        with self.session() as session:
            for start in range(0, len(ordered), 500):  # within SQLite's limit on bound parameters
                statement = (
                    select(RolloutRow)
                    .where(RolloutRow.run_id.in_(ordered[start : start + 500]), RolloutRow.rank == 0)
                    .order_by(RolloutRow.run_id, RolloutRow.iteration, RolloutRow.index)
                )
                for row in session.scalars(statement):
                    rows[row.run_id].append(row)
        return rows

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

    # evaluations ------------------------------------------------------------------------------------
    def create_eval(self, eval_row: EvalRow, items: Sequence[EvalItemRow]) -> None:
        with self.session() as session:
            if session.get(EvalRow, eval_row.eval_id) is not None:
                raise KeyError(f"evaluation run {eval_row.eval_id!r} already exists")
            session.add(eval_row)
            session.flush()
            session.add_all(items)

    def get_eval(self, eval_id: str) -> EvalRow | None:
        with self.session() as session:
            return session.get(EvalRow, eval_id)

    def require_eval(self, eval_id: str) -> EvalRow:
        row = self.get_eval(eval_id)
        if row is None:
            raise KeyError(f"no evaluation run {eval_id!r}")
        return row

    def list_evals(self) -> Sequence[EvalRow]:
        with self.session() as session:
            return session.scalars(select(EvalRow).order_by(EvalRow.created_at)).all()

    def update_eval(self, eval_id: str, **values: Any) -> None:
        self._update(EvalRow, eval_id, f"evaluation run {eval_id!r}", values)

    def eval_items(self, eval_id: str) -> Sequence[EvalItemRow]:
        with self.session() as session:
            statement = select(EvalItemRow).where(EvalItemRow.eval_id == eval_id).order_by(EvalItemRow.position)
            return session.scalars(statement).all()

    def eval_item_of_thread(self, thread_id: str) -> EvalItemRow | None:
        """The evaluation problem a thread runs, if any."""
        with self.session() as session:
            statement = select(EvalItemRow).where(EvalItemRow.thread_id == thread_id).limit(1)
            return session.scalars(statement).first()

    def evaluation_of_thread(self, thread_id: str) -> str | None:
        """The evaluation run a thread belongs to, if any."""
        item = self.eval_item_of_thread(thread_id)
        return item.eval_id if item is not None else None

    def update_eval_item(self, eval_id: str, position: int, **values: Any) -> None:
        self._update(EvalItemRow, (eval_id, position), f"item {position} in evaluation run {eval_id!r}", values)


_STORES: dict[str, Store] = {}
_STORES_LOCK = threading.Lock()


def get_store(path: str | os.PathLike[str]) -> Store:
    """One `Store` (engine, connection pool) per database file and process."""
    key = str(Path(path).expanduser().resolve())
    with _STORES_LOCK:
        store = _STORES.get(key)
        if store is None:
            store = Store(key)  # checks the file (`check_db_path`) once
            _STORES[key] = store
        return store
