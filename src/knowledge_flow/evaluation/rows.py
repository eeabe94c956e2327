"""The evaluations' rows, beside the rollout store in the same file: ``kf_evals`` (one evaluation run, its
manifest and status) and ``kf_eval_items`` (one problem: its thread, gold answer and per-iteration results).
`EvalStore` reads and writes them."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Integer, String, Text, select
from sqlalchemy.orm import Mapped, mapped_column

from knowledge_flow.persistence.rows import Base, RunRow
from knowledge_flow.persistence.seals import seal_row
from knowledge_flow.persistence.store import RolloutStore, get_store


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
    seal: Mapped[str | None] = mapped_column(String(32))

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
    seal: Mapped[str | None] = mapped_column(String(32))

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


class EvalStore:
    """The evaluation rows of one database, through its rollout store (`EvalStore(store)`)."""

    def __init__(self, store: RolloutStore) -> None:
        self.store = store

    def create_eval(self, eval_row: EvalRow, items: Sequence[EvalItemRow]) -> None:
        with self.store.session() as session:
            if session.get(EvalRow, eval_row.eval_id) is not None:
                raise KeyError(f"evaluation run {eval_row.eval_id!r} already exists")
            seal_row(eval_row)
            session.add(eval_row)
            session.flush()
            for item in items:
                seal_row(item)
            session.add_all(items)

    def get_eval(self, eval_id: str) -> EvalRow | None:
        with self.store.session() as session:
            return session.get(EvalRow, eval_id)

    def require_eval(self, eval_id: str) -> EvalRow:
        row = self.get_eval(eval_id)
        if row is None:
            raise KeyError(f"no evaluation run {eval_id!r}")
        return row

    def list_evals(self) -> Sequence[EvalRow]:
        with self.store.session() as session:
            return session.scalars(select(EvalRow).order_by(EvalRow.created_at)).all()

    def update_eval(self, eval_id: str, **values: Any) -> None:
        self.store.update_row(EvalRow, eval_id, f"evaluation run {eval_id!r}", values)

    def eval_items(self, eval_id: str) -> Sequence[EvalItemRow]:
        with self.store.session() as session:
            statement = select(EvalItemRow).where(EvalItemRow.eval_id == eval_id).order_by(EvalItemRow.position)
            return session.scalars(statement).all()

    def eval_item_of_thread(self, thread_id: str) -> EvalItemRow | None:
        """The evaluation problem a thread runs, if any."""
        with self.store.session() as session:
            statement = select(EvalItemRow).where(EvalItemRow.thread_id == thread_id).limit(1)
            return session.scalars(statement).first()

    def evaluation_of_thread(self, thread_id: str) -> str | None:
        """The evaluation run a thread belongs to, if any."""
        item = self.eval_item_of_thread(thread_id)
        return item.eval_id if item is not None else None

    def item_runs(self, items: Sequence[EvalItemRow]) -> dict[int, str]:
        """Each problem's run by position: a finished problem's recorded run, else its thread's latest (a
        problem stopped mid-way has one too, with the rollouts it stored)."""
        runs = {item.position: item.run_id for item in items if item.run_id}
        threads = {item.thread_id: item.position for item in items if not item.run_id}
        names = list(threads)
        with self.store.session() as session:
            for start in range(0, len(names), 500):
                statement = (
                    select(RunRow.thread_id, RunRow.run_id)
                    .where(RunRow.thread_id.in_(names[start : start + 500]))
                    .order_by(RunRow.created_at)
                )
                for thread_id, run_id in session.execute(statement):
                    runs[threads[thread_id]] = run_id  # the latest comes last
        return runs

    def update_eval_item(self, eval_id: str, position: int, **values: Any) -> None:
        self.store.update_row(
            EvalItemRow, (eval_id, position), f"item {position} in evaluation run {eval_id!r}", values
        )


def get_eval_store(path: str | os.PathLike[str]) -> EvalStore:
    """The evaluation rows of the database at `path` (and its rollout store, `.store`)."""
    return EvalStore(get_store(path))


__all__ = ["EvalItemRow", "EvalRow", "EvalStore", "get_eval_store"]
