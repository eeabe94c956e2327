"""Leases: one process at a time holds a run (a thread, an evaluation on SQLite) or is a worker of one.

A lease is a row of ``kf_leases``: the key (``thread:ID``, ``evaluation run:ID``, ``worker:EVAL:TOKEN``), the
owner (pid, host, a token unique to the holder), when it was taken, a heartbeat and the holder's heartbeat
timeout. The holder renews the heartbeat every sixth of its timeout from a background thread; a lease whose
heartbeat is older than its timeout, or whose owner runs on this host and no longer exists (a SIGKILLed
process), is free to take. Heartbeats are the database's clock, so hosts whose clocks differ agree on them.
Taking and checking happen in one transaction (SQLite: a write transaction; PostgreSQL: the row locked, and
of two processes inserting the same key one fails and finds the other's lease), so two processes starting
at once cannot both win. Different keys (runs) in one database never wait for each other.

The timeout is ``KFLOW_HEARTBEAT_TIMEOUT`` seconds (default 30): how long a worker that died on another host
keeps its problems before another worker takes them over.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Float, Integer, String, Text, delete, func, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql.functions import FunctionElement

from knowledge_flow.persistence.rows import Base, utcnow
from knowledge_flow.persistence.store import RolloutStore

DEFAULT_TIMEOUT_S = 30.0
TIMEOUT_ENV = "KFLOW_HEARTBEAT_TIMEOUT"
#: Heartbeats per timeout: a holder misses five before it is presumed dead.
BEATS_PER_TIMEOUT = 6


def heartbeat_timeout() -> float:
    """Seconds without a heartbeat after which a lease is free (``KFLOW_HEARTBEAT_TIMEOUT``, default 30)."""
    value = os.environ.get(TIMEOUT_ENV)
    if not value:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV} must be a number of seconds, got {value!r}") from None
    if not 0.5 <= seconds <= 86400:
        raise ValueError(f"{TIMEOUT_ENV} must be between 0.5 and 86400 seconds, got {value!r}")
    return seconds


def worker_name() -> str:
    """This process as a worker is named: ``HOST:PID``."""
    return f"{socket.gethostname()}:{os.getpid()}"


class LeaseRow(Base):
    __tablename__ = "kf_leases"
    key: Mapped[str] = mapped_column(String(300), primary_key=True)
    token: Mapped[str] = mapped_column(String(64))
    pid: Mapped[int] = mapped_column(Integer)
    host: Mapped[str] = mapped_column(Text)
    taken_at: Mapped[str] = mapped_column(String(40))
    heartbeat: Mapped[float] = mapped_column(Float)
    """Seconds since the epoch of the last renewal, by the database's clock."""
    timeout: Mapped[float | None] = mapped_column(Float)
    """The holder's heartbeat timeout (None: `DEFAULT_TIMEOUT_S`)."""

    @property
    def worker(self) -> str:
        return f"{self.host}:{self.pid}"


class db_clock(FunctionElement[float]):
    """The database's clock in seconds since the epoch."""

    type = Float()
    inherit_cache = True


@compiles(db_clock, "sqlite")
def _sqlite_clock(_element: db_clock, _compiler: Any, **_kw: Any) -> str:
    return "((julianday('now') - 2440587.5) * 86400.0)"


@compiles(db_clock, "postgresql")
def _postgres_clock(_element: db_clock, _compiler: Any, **_kw: Any) -> str:
    return "CAST(extract(epoch FROM clock_timestamp()) AS DOUBLE PRECISION)"


def fresh() -> ColumnElement[bool]:
    """A lease row whose heartbeat is within its timeout."""
    return LeaseRow.heartbeat + func.coalesce(LeaseRow.timeout, DEFAULT_TIMEOUT_S) > db_clock()


class LeaseHeld(RuntimeError):
    """Another live process holds the lease."""

    def __init__(self, key: str, row: LeaseRow) -> None:
        what = key.replace(":", " ", 1)
        super().__init__(f"{what} is being continued by pid {row.pid} on {row.host} since {row.taken_at}")
        self.row = row


def _alive_here(row: LeaseRow) -> bool:
    """Whether the owner may still run: always, on another host (its heartbeat decides)."""
    if row.host != socket.gethostname():
        return True
    try:
        os.kill(row.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Lease:
    store: RolloutStore
    key: str
    token: str
    _stop: threading.Event
    timeout: float = DEFAULT_TIMEOUT_S
    _thread: threading.Thread | None = None

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * self.timeout / BEATS_PER_TIMEOUT)
        # a full or failing disk, a lost connection: the lease expires with this process
        with contextlib.suppress(DBAPIError, sqlite3.Error), self.store.session() as session:
            session.execute(delete(LeaseRow).where(LeaseRow.key == self.key, LeaseRow.token == self.token))

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


def acquire(store: RolloutStore, key: str, *, heartbeat: bool = True, timeout: float | None = None) -> Lease:
    """Take the lease on `key` or raise `LeaseHeld`; renews itself until released."""
    token = uuid.uuid4().hex
    timeout = heartbeat_timeout() if timeout is None else timeout
    for attempt in range(2):
        try:
            _take(store, key, token, timeout)
            break
        except IntegrityError:  # PostgreSQL: another process inserted the key first; its lease decides
            if attempt:
                raise
    lease = Lease(store, key, token, threading.Event(), timeout)
    if heartbeat:
        lease._thread = threading.Thread(target=_renew, args=(lease,), name=f"kflow-lease-{key}", daemon=True)
        lease._thread.start()
    return lease


def _take(store: RolloutStore, key: str, token: str, timeout: float) -> None:
    with store.session() as session:  # SQLite: BEGIN IMMEDIATE; PostgreSQL: the row locked
        row = session.get(LeaseRow, key, with_for_update=True)
        if row is not None:
            live = session.scalar(select(fresh()).where(LeaseRow.key == key))
            if live and _alive_here(row):
                raise LeaseHeld(key, row)
            session.delete(row)
            session.flush()
        session.add(
            LeaseRow(
                key=key,
                token=token,
                pid=os.getpid(),
                host=socket.gethostname(),
                taken_at=utcnow(),
                heartbeat=db_clock(),
                timeout=timeout,
            )
        )


def _renew(lease: Lease) -> None:
    while not lease._stop.wait(lease.timeout / BEATS_PER_TIMEOUT):
        # a lost connection, a failing disk: try again at the next beat (the command reports what failed)
        with contextlib.suppress(DBAPIError, sqlite3.Error), lease.store.session() as session:
            statement = (
                update(LeaseRow)
                .where(LeaseRow.key == lease.key, LeaseRow.token == lease.token)
                .values(heartbeat=db_clock())
                .execution_options(synchronize_session=False)
            )
            if not session.execute(statement).rowcount:  # type: ignore[attr-defined]
                return  # taken over (we were presumed dead): stop renewing


def holder(store: RolloutStore, key: str) -> LeaseRow | None:
    """The live holder of `key`, if any."""
    with store.session() as session:
        row = session.scalars(select(LeaseRow).where(LeaseRow.key == key, fresh())).first()
        if row is None or not _alive_here(row):
            return None
        return row


def reap(store: RolloutStore, prefix: str) -> int:
    """Remove the leases under `prefix` whose owner ran on this host and is gone (they are free at once,
    not only after their timeout); how many."""
    with store.session() as session:
        rows = session.scalars(
            select(LeaseRow).where(
                LeaseRow.key.startswith(prefix, autoescape=True), LeaseRow.host == socket.gethostname()
            )
        ).all()
        dead = [row.key for row in rows if not _alive_here(row)]
        if dead:
            session.execute(delete(LeaseRow).where(LeaseRow.key.in_(dead)))
    return len(dead)


def since(row: LeaseRow) -> str:
    return datetime.fromtimestamp(row.heartbeat, UTC).isoformat(timespec="seconds")
