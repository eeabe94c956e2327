"""The OpenAI-compatible endpoint: requests and their budgets, what the server serves, replicas and failover."""

from knowledge_flow.endpoint.client import Completion, Sampling, describe, redact
from knowledge_flow.endpoint.replicas import check_urls, get_pool, split_urls
from knowledge_flow.endpoint.requests import Prepared, PromptTooLong, prepare, sample, send, send_stream
from knowledge_flow.endpoint.served import Served, ServedModel, get_served

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
