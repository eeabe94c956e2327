"""Helpers the nodes share."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

from langgraph.runtime import Runtime

from knowledge_flow.context import Context
from knowledge_flow.endpoint import Served, get_served
from knowledge_flow.endpoint.client import endpoint_errors
from knowledge_flow.persistence.store import RolloutStore, get_store
from knowledge_flow.state import State
from knowledge_flow.strategies import Step, Strategy, get_strategy


def context_of(runtime: Runtime[Context]) -> Context:
    """The runtime context, or one built from the environment when the caller passed none."""
    return runtime.context if isinstance(runtime.context, Context) else Context()


Node = TypeVar("Node", bound=Callable[[State, Runtime[Context]], dict[str, Any]])


def guarded(node: Node) -> Node:
    """`node` with the endpoint's errors that reach it (the served model's extras, an endpoint down for good)
    turned into `EndpointError`, without the run's secrets (`client.endpoint_errors`)."""

    @functools.wraps(node)
    def run(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
        with endpoint_errors(context_of(runtime).secrets):
            return node(state, runtime)

    return cast(Node, run)


def store_of(runtime: Runtime[Context]) -> RolloutStore:
    return get_store(context_of(runtime).db_path)


def served_of(runtime: Runtime[Context], model: str) -> Served:
    """The served model's extras (context, tokenizer) on the run's endpoint."""
    ctx = context_of(runtime)
    return get_served(ctx.base_url, ctx.api_key, model, timeout=ctx.request_timeout, max_retries=ctx.max_retries)


def step_of(state: State, runtime: Runtime[Context]) -> tuple[Strategy, Step, Served]:
    """The run's strategy; what it sees (the state, its prompt-set table from the text the run stored, the
    served tokenizer, the stored rollouts); the served model."""
    params = state["params"]
    strategy = get_strategy(params["strategy"])
    store = store_of(runtime)
    table = store.prompt_set(params["prompt_hash"]).table(strategy.spec)
    served = served_of(runtime, params["model"])
    return strategy, Step(state, table, served, store), served
