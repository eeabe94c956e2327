"""The Knowledge Flow graph: prepare -> solve -> extract_answer -> distill_knowledge -> stop_check -> loop.

Optional steps make LLM calls outside the rollouts, for the strategies and rules that need them: `reflect`
before an iteration (strategies that reflect, e.g. trt: planning before the first iteration, reflection
before the others unless a manager call does its work), `verify` or `manage` between `extract_answer` and
`distill_knowledge` (select rules `verifier` and `manager`). The routers return `Literal` targets, so Studio
draws every edge::

    START -> prepare -> (reflect ->) solve -> extract_answer -> (verify | manage ->) distill_knowledge
    distill_knowledge -> stop_check -> reflect | solve | END

`builder` is the uncompiled `StateGraph`; `graph` is compiled with the SQLite checkpointer (the file named
by ``KFLOW_DB``, opened on first use), so ``graph.invoke({"problem": ...}, {"configurable": {"thread_id":
T}})`` runs and ``graph.invoke(None, same_config)`` resumes. LangGraph Studio uses `studio.graph`, which has
no checkpointer of its own (the server brings one).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from knowledge_flow.context import Context
from knowledge_flow.nodes import (
    distill_knowledge,
    extract_answer,
    manage,
    prepare,
    reflect,
    route_after_extract,
    route_after_prepare,
    route_after_stop_check,
    solve,
    stop_check,
    verify,
)
from knowledge_flow.params import MAX_ITERATIONS, recursion_limit, resolve_run
from knowledge_flow.persistence.checkpointer import SqliteCheckpointer
from knowledge_flow.state import InputState, OutputState, PrepareInput, State

GRAPH_NAME = "Knowledge Flow"
#: LangGraph reads the default durability of a run from this configurable key.
DURABILITY_KEY = "__pregel_durability"

builder = StateGraph(State, context_schema=Context, input_schema=InputState, output_schema=OutputState)
builder.add_node("prepare", prepare, input_schema=PrepareInput)
builder.add_node("solve", solve)
builder.add_node("extract_answer", extract_answer)
builder.add_node("distill_knowledge", distill_knowledge)
builder.add_node("stop_check", stop_check)
builder.add_node("reflect", reflect)
builder.add_node("verify", verify)
builder.add_node("manage", manage)
builder.add_edge(START, "prepare")
builder.add_conditional_edges("prepare", route_after_prepare)
builder.add_edge("reflect", "solve")
builder.add_edge("solve", "extract_answer")
builder.add_conditional_edges("extract_answer", route_after_extract)
builder.add_edge("verify", "distill_knowledge")
builder.add_edge("manage", "distill_knowledge")
builder.add_edge("distill_knowledge", "stop_check")
builder.add_conditional_edges("stop_check", route_after_stop_check)


def check_input(graph_input: Any) -> None:
    """Refuse a new run's bad input (ValueError, one line) before LangGraph writes anything for it."""
    if not isinstance(graph_input, dict):
        return
    problem = graph_input.get("problem")
    if not isinstance(problem, str) or not problem.strip():
        raise ValueError("problem must be a non-empty string")
    resolve_run(graph_input)


class KnowledgeFlowGraph(CompiledStateGraph[State, Context, Any, OutputState]):
    """The compiled graph; a new run's input is checked before the first checkpoint is written (`prepare`
    checks it again, for callers that write state by other means)."""

    def stream(self, input: Any, config: Any = None, **kwargs: Any) -> Iterator[Any]:
        check_input(input)
        return super().stream(input, config, **kwargs)

    async def astream(self, input: Any, config: Any = None, **kwargs: Any) -> AsyncIterator[Any]:
        check_input(input)
        async for chunk in super().astream(input, config, **kwargs):
            yield chunk


def compile_graph(checkpointer: BaseCheckpointSaver[str] | None = None) -> KnowledgeFlowGraph:
    """Compile the graph with `checkpointer` and a recursion limit that admits the largest budget."""
    compiled = builder.compile(checkpointer=checkpointer, name=GRAPH_NAME)
    compiled.__class__ = KnowledgeFlowGraph
    # Checkpoint each step before the next one starts ("sync" durability): a rollout costs minutes of GPU
    # time, a checkpoint write milliseconds. Callers can still pass `durability=` to invoke/stream.
    configured = compiled.with_config(
        {"recursion_limit": recursion_limit(MAX_ITERATIONS), "configurable": {DURABILITY_KEY: "sync"}}
    )
    assert isinstance(configured, KnowledgeFlowGraph)
    return configured


graph = compile_graph(SqliteCheckpointer())
