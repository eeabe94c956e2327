"""LangGraph's Postgres checkpointer, opened on first use, compressed like the SQLite one (needs the
``postgres`` extra)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver, ChannelVersions, Checkpoint, CheckpointMetadata
from langgraph.checkpoint.postgres import PostgresSaver
from psycopg import Capabilities

from knowledge_flow.persistence.checkpointer import IntegerVersions
from knowledge_flow.persistence.compression import CompressingSerializer
from knowledge_flow.persistence.postgres import check_db_url, open_checkpointer
from knowledge_flow.persistence.urls import shown


@dataclass(frozen=True)
class TextBlob:
    """A text channel value the saver must store as a blob: PostgreSQL's JSON, where the saver keeps short
    values, cannot hold NUL characters (a model's output can)."""

    text: str


class BlobSerializer(CompressingSerializer):
    """`CompressingSerializer` that writes a `TextBlob` as its text (it loads back as the same string)."""

    def dumps_typed(self, obj: Any) -> tuple[str, bytes]:
        return super().dumps_typed(obj.text if isinstance(obj, TextBlob) else obj)


class PostgresCheckpointer(IntegerVersions, PostgresSaver):
    """A `PostgresSaver` of the database at `url` that connects on first use (a small pool; the saver serialises
    its queries with its lock) and sets up its tables then. Checkpoint blobs and writes are stored compressed
    (`CompressingSerializer`), channel versions are integers (`IntegerVersions`)."""

    def __init__(self, url: str) -> None:
        BaseCheckpointSaver.__init__(self, serde=BlobSerializer())
        self.url = url
        self.pipe = None
        self.lock = threading.Lock()
        self.supports_pipeline = Capabilities().has_pipeline()
        self._pool: Any = None
        self._open_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"PostgresCheckpointer({shown(self.url)!r})"

    @property
    def conn(self) -> Any:
        if self._pool is None:
            with self._open_lock:
                if self._pool is None:
                    self._pool = open_checkpointer(check_db_url(self.url))
        return self._pool

    @conn.setter
    def conn(self, value: Any) -> None:
        self._pool = value

    def setup(self) -> None:
        """Done when the pool opens (`open_checkpointer`, under the database's schema lock)."""
        _ = self.conn

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        # The blobs' version column is text: integer versions are written as their digits (the checkpoint's
        # own JSON holds them as numbers, which PostgreSQL reads back as the same text).
        values = checkpoint["channel_values"]
        if any(isinstance(value, str) and "\x00" in value for value in values.values()):
            blobs = {k: TextBlob(v) if isinstance(v, str) and "\x00" in v else v for k, v in values.items()}
            checkpoint = {**checkpoint, "channel_values": blobs}
        return super().put(config, checkpoint, metadata, {key: str(value) for key, value in new_versions.items()})

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


__all__ = ["PostgresCheckpointer"]
