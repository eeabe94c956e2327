"""The OpenAI-compatible endpoint: requests and their budgets, what the server serves, replicas and failover.

Modules: `client` (the OpenAI SDK requests), `stream` (streams the client can stop), `requests` (paths,
budgets, sampling), `served` (context length, tokenizer, thinking templates), `replicas` (spreading requests,
failover), `bounds` (how much of a reply is read, for how long), `replies` (the shape a reply must have),
`urls` (endpoint URLs and the keys they carry), `secrets` (redaction). The names below load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from knowledge_flow.endpoint.client import Completion, Sampling
    from knowledge_flow.endpoint.replicas import get_pool
    from knowledge_flow.endpoint.requests import Prepared, PromptTooLong, prepare, sample, send, send_stream
    from knowledge_flow.endpoint.secrets import describe, redact
    from knowledge_flow.endpoint.served import Served, ServedModel, get_served
    from knowledge_flow.endpoint.urls import check_urls, split_urls

_EXPORTS = {
    **dict.fromkeys(("Completion", "Sampling"), "knowledge_flow.endpoint.client"),
    **dict.fromkeys(("describe", "redact"), "knowledge_flow.endpoint.secrets"),
    **dict.fromkeys(("check_urls", "split_urls"), "knowledge_flow.endpoint.urls"),
    "get_pool": "knowledge_flow.endpoint.replicas",
    **dict.fromkeys(
        ("Prepared", "PromptTooLong", "prepare", "sample", "send", "send_stream"), "knowledge_flow.endpoint.requests"
    ),
    **dict.fromkeys(("Served", "ServedModel", "get_served"), "knowledge_flow.endpoint.served"),
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'knowledge_flow.endpoint' has no attribute {name!r}")


__all__ = [
    "Completion",
    "Prepared",
    "PromptTooLong",
    "Sampling",
    "Served",
    "ServedModel",
    "check_urls",
    "describe",
    "get_pool",
    "get_served",
    "prepare",
    "redact",
    "sample",
    "send",
    "send_stream",
    "split_urls",
]
