"""Runtime context: how to reach the endpoint and the database. Not checkpointed, never persisted."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

from knowledge_flow.persistence.files import DEFAULT_DB

DEFAULT_LOCAL_PORT = 8765
DEFAULT_LOCAL_BASE_URL = f"http://127.0.0.1:{DEFAULT_LOCAL_PORT}/v1"
#: The model name runs send by default: the packaged CPU model's served name.
LOCAL_MODEL_ALIAS = "qwen2.5-coder-0.5b-instruct"


def _env(*names: str, default: str | None = None) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return default


@dataclass(kw_only=True)
class Context:
    """Endpoint and storage settings for one invocation of the graph."""

    base_url: str = field(
        default_factory=lambda: _env("KFLOW_BASE_URL", default=DEFAULT_LOCAL_BASE_URL) or "",
        repr=False,  # it may carry a key (user-info, query)
        metadata={"description": "OpenAI-compatible base URL (e.g. a vLLM server's http://host:8000/v1)."},
    )
    api_key: str = field(
        default_factory=lambda: _env("KFLOW_API_KEY", "OPENAI_API_KEY", default="EMPTY") or "EMPTY",
        repr=False,
        metadata={
            "description": "API key sent to the endpoint (a key in the URL's user-info takes its place). Never "
            "stored in state, database or logs."
        },
    )
    db_path: str = field(
        default_factory=lambda: _env("KFLOW_DB", default=DEFAULT_DB) or DEFAULT_DB,
        metadata={"description": "SQLite file holding checkpoints and the rollout store."},
    )
    request_timeout: float = field(
        default=3600.0,
        metadata={"description": "Seconds to wait for one completion (long reasoning traces take minutes)."},
    )
    max_retries: int = field(
        default=6,
        metadata={"description": "Retries with exponential backoff on 429, 5xx, timeouts and lost connections."},
    )

    @property
    def secrets(self) -> tuple[str, ...]:
        """The API key and the secrets of the endpoint URLs: kept out of every text stored or shown."""
        from knowledge_flow.endpoint.urls import url_secrets

        return (self.api_key, *url_secrets(self.base_url))

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name in ("base_url", "db_path") and not getattr(self, f.name):
                raise ValueError(f"{f.name} must not be empty")
