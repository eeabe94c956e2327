"""Leases: one process at a time continues a run (an evaluation, or a thread).

A lease is a row of ``kf_leases``: the key (``eval:ID`` or ``thread:ID``), the owner (pid, host, a token
unique to the holder), when it was taken, and a heartbeat. The holder renews the heartbeat every
`HEARTBEAT_S` seconds from a background thread; a lease whose heartbeat is older than `EXPIRY_S`, or whose
owner runs on this host and no longer exists (a SIGKILLed process), is free to take. Taking and checking
happen in one write transaction, so two processes starting at once cannot both win. Different keys (runs)
in one database never wait for each other.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Float, Integer, String, Text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Mapped, mapped_column

from knowledge_flow.persistence.rows import Base, utcnow
from knowledge_flow.persistence.store import RolloutStore

HEARTBEAT_S = 5.0
EXPIRY_S = 30.0


class LeaseRow(Base):
    __tablename__ = "kf_leases"
    key: Mapped[str] = mapped_column(String(300), primary_key=True)
    token: Mapped[str] = mapped_column(String(64))
    pid: Mapped[int] = mapped_column(Integer)
    host: Mapped[str] = mapped_column(Text)
    taken_at: Mapped[str] = mapped_column(String(40))
    heartbeat: Mapped[float] = mapped_column(Float)
    """Seconds since the epoch of the last renewal."""


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
    _thread: threading.Thread | None = None

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * HEARTBEAT_S)
        try:
            with self.store.session() as session:
                row = session.get(LeaseRow, self.key)
                if row is not None and row.token == self.token:
                    session.delete(row)
        except (DBAPIError, sqlite3.Error):  # a full or failing disk: the lease expires with this process
            pass

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


def acquire(store: RolloutStore, key: str, *, heartbeat: bool = True) -> Lease:
    """Take the lease on `key` or raise `LeaseHeld`; renews itself until released."""
    token = uuid.uuid4().hex
    now = time.time()
    with store.session() as session:  # BEGIN IMMEDIATE: the check and the take are one transaction
        row = session.get(LeaseRow, key)
        if row is not None and row.token != token:
            fresh = now - row.heartbeat < EXPIRY_S
            if fresh and _alive_here(row):
                raise LeaseHeld(key, row)
            session.delete(row)
            session.flush()
        session.add(
            LeaseRow(key=key, token=token, pid=os.getpid(), host=socket.gethostname(), taken_at=utcnow(), heartbeat=now)
        )
    lease = Lease(store, key, token, threading.Event())
    if heartbeat:
        lease._thread = threading.Thread(target=_renew, args=(lease,), name=f"kflow-lease-{key}", daemon=True)
        lease._thread.start()
    return lease


def _renew(lease: Lease) -> None:
    while not lease._stop.wait(HEARTBEAT_S):
        try:
            with lease.store.session() as session:
                row = session.get(LeaseRow, lease.key)
                if row is None or row.token != lease.token:
                    return  # taken over (we were presumed dead): stop renewing
                row.heartbeat = time.time()
        except (DBAPIError, sqlite3.Error):  # the database failed: the command reports it
            return


def holder(store: RolloutStore, key: str) -> LeaseRow | None:
    """The live holder of `key`, if any."""
    with store.session() as session:
        row = session.get(LeaseRow, key)
        if row is None or time.time() - row.heartbeat >= EXPIRY_S or not _alive_here(row):
            return None
        return row


def since(row: LeaseRow) -> str:
    return datetime.fromtimestamp(row.heartbeat, UTC).isoformat(timespec="seconds")
