"""SQLite persistence: LangGraph checkpoints and the rollout store share one file.

Modules: `files` (the file checks, standard library only), `checkpointer` (LangGraph's SQLite saver, opened
lazily, compressed), `rows` and `schema` (the tables, opening and migrating a file), `store` (runs, rollouts, calls,
prompt sets), `seals` (a digest of every row's stored values) and `damage` (runs whose rows are missing, altered
or unreadable), `leases` (one process per run).
The names below load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from knowledge_flow.persistence.checkpointer import SqliteCheckpointer, connect
    from knowledge_flow.persistence.store import RolloutRow, RolloutStore, RunRow, get_store

_EXPORTS = {
    "SqliteCheckpointer": "knowledge_flow.persistence.checkpointer",
    "connect": "knowledge_flow.persistence.checkpointer",
    "RolloutRow": "knowledge_flow.persistence.store",
    "RunRow": "knowledge_flow.persistence.store",
    "RolloutStore": "knowledge_flow.persistence.store",
    "get_store": "knowledge_flow.persistence.store",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'knowledge_flow.persistence' has no attribute {name!r}")


__all__ = ["RolloutRow", "RolloutStore", "RunRow", "SqliteCheckpointer", "connect", "get_store"]
