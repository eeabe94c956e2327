"""Helpers the nodes share."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from langgraph.runtime import Runtime

from knowledge_flow.context import Context
from knowledge_flow.persistence.store import Store, get_store


def context_of(runtime: Runtime[Context]) -> Context:
    """The runtime context, or one built from the environment when the caller passed none."""
    return runtime.context if isinstance(runtime.context, Context) else Context()


def store_of(runtime: Runtime[Context]) -> Store:
    return get_store(context_of(runtime).db_path)


def package_version() -> str:
    try:
        return version("knowledge-flow")
    except PackageNotFoundError:
        return "0+unknown"
