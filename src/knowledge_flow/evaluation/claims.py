"""Workers: the processes that share an evaluation's problems (`kflow eval --resume R` on several hosts at once,
against one PostgreSQL database; on SQLite one process holds the whole evaluation).

A worker holds a lease (``worker:EVAL:TOKEN`` in ``kf_leases``, renewed by its heartbeat) and claims problems:
in one transaction it picks problems that are not done and not claimed by a live worker, the rows locked and
the ones other workers are claiming at that moment skipped (``FOR UPDATE SKIP LOCKED``), and writes its lease
key into them. It runs them and releases each when it is done with it. A worker that dies keeps its claims
until its heartbeat times out (at once when it ran on this host), then another worker claims those problems
and continues each from its last checkpoint: every rollout already stored is read back, never requested again.
A problem that failed is not claimed again by the worker it failed on (`skip`; another worker, with its own
endpoint, may try it once).
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence

from sqlalchemy import ColumnElement, func, not_, or_, select, update

from knowledge_flow.evaluation.rows import EvalItemRow
from knowledge_flow.persistence.leases import Lease, LeaseRow, acquire, fresh, reap
from knowledge_flow.persistence.store import RolloutStore


def worker_prefix(eval_id: str) -> str:
    return f"worker:{eval_id}:"


def join(store: RolloutStore, eval_id: str) -> Lease:
    """Become a worker of `eval_id`: a lease of one's own, renewed until released."""
    reap(store, worker_prefix(eval_id))
    return acquire(store, f"{worker_prefix(eval_id)}{uuid.uuid4().hex[:16]}")


def _live_keys() -> ColumnElement[bool]:
    return EvalItemRow.claimed_by.in_(select(LeaseRow.key).where(fresh()).scalar_subquery())


def _open(eval_id: str, skip: Collection[int]) -> list[ColumnElement[bool]]:
    """Problems of `eval_id` not done, but those in `skip`."""
    conditions = [EvalItemRow.eval_id == eval_id, EvalItemRow.status != "done"]
    if skip:
        conditions.append(EvalItemRow.position.not_in(sorted(skip)))
    return conditions


def claim(store: RolloutStore, eval_id: str, lease: Lease, limit: int, skip: Collection[int] = ()) -> list[EvalItemRow]:
    """Claim up to `limit` free problems of `eval_id`, in order of position; never those in `skip`."""
    if limit < 1:
        return []
    with store.session() as session:
        statement = (
            select(EvalItemRow)
            .where(*_open(eval_id, skip), or_(EvalItemRow.claimed_by.is_(None), not_(_live_keys())))
            .order_by(EvalItemRow.position)
            .limit(limit)
            .with_for_update(skip_locked=True, of=EvalItemRow)
        )
        items = list(session.scalars(statement))
        for item in items:
            item.claimed_by = lease.key
        return items


def claim_position(store: RolloutStore, eval_id: str, position: int, lease: Lease) -> LeaseRow | None:
    """Claim one problem (to run its thread alone); the live worker that holds it instead, if any."""
    with store.session() as session:
        item = session.get(EvalItemRow, (eval_id, position), with_for_update=True)
        if item is None:
            raise KeyError(f"no problem {position} in evaluation run {eval_id!r}")
        if item.claimed_by is not None and item.claimed_by != lease.key:
            held = session.scalars(select(LeaseRow).where(LeaseRow.key == item.claimed_by, fresh())).first()
            if held is not None:
                return held
        item.claimed_by = lease.key
    return None


def release(store: RolloutStore, eval_id: str, positions: Sequence[int], lease: Lease) -> None:
    """Give problems back (done, failed, or left for another worker)."""
    if not positions:
        return
    with store.session() as session:
        session.execute(
            update(EvalItemRow)
            .where(
                EvalItemRow.eval_id == eval_id,
                EvalItemRow.position.in_(positions),
                EvalItemRow.claimed_by == lease.key,
            )
            .values(claimed_by=None)
            .execution_options(synchronize_session=False)
        )


def release_all(store: RolloutStore, eval_id: str) -> None:
    """Free every claim of `eval_id` (its only process, on SQLite, finds the claims of dead ones)."""
    with store.session() as session:
        session.execute(
            update(EvalItemRow)
            .where(EvalItemRow.eval_id == eval_id, EvalItemRow.claimed_by.is_not(None))
            .values(claimed_by=None)
            .execution_options(synchronize_session=False)
        )


def claimed_elsewhere(store: RolloutStore, eval_id: str, lease: Lease, skip: Collection[int] = ()) -> int:
    """Problems this worker could still take over: not done, not in `skip`, held by another live worker (which
    may die)."""
    reap(store, worker_prefix(eval_id))
    with store.session() as session:
        statement = select(func.count()).where(*_open(eval_id, skip), EvalItemRow.claimed_by != lease.key, _live_keys())
        return int(session.scalar(statement) or 0)


def live_workers(store: RolloutStore, eval_id: str) -> list[LeaseRow]:
    """The workers of `eval_id` whose heartbeat is fresh."""
    reap(store, worker_prefix(eval_id))
    with store.session() as session:
        statement = select(LeaseRow).where(LeaseRow.key.startswith(worker_prefix(eval_id), autoescape=True), fresh())
        return list(session.scalars(statement.order_by(LeaseRow.taken_at)))


__all__ = [
    "claim",
    "claim_position",
    "claimed_elsewhere",
    "join",
    "live_workers",
    "release",
    "release_all",
    "worker_prefix",
]
