"""SQLite persistence: LangGraph checkpoints and the rollout store share one file."""

from knowledge_flow.persistence.checkpointer import SqliteCheckpointer, connect
from knowledge_flow.persistence.store import RolloutRow, RunRow, Store, get_store

__all__ = ["RolloutRow", "RunRow", "SqliteCheckpointer", "Store", "connect", "get_store"]
