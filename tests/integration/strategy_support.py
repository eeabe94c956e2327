"""Run the graph against a scripted server and record the knowledge state after every iteration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from knowledge_flow import Context, compile_graph
from knowledge_flow.persistence import SqliteCheckpointer
from tests.support.scripted_server import ScriptedServer

PROBLEM = "Find the number of ordered pairs (x, y) of integers with x^2 + y^2 = 25."


def run_recorded(server: ScriptedServer, db: Path, **inputs: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(final state, state after each distill_knowledge)."""
    checkpointer = SqliteCheckpointer(db)
    graph = compile_graph(checkpointer)
    config: Any = {"configurable": {"thread_id": "s"}}
    snapshots: list[dict[str, Any]] = []
    updated: set[str] = set()
    try:
        for mode, chunk in graph.stream(
            {"problem": PROBLEM, "model": "scripted-model", **inputs},
            config,
            context=Context(base_url=server.base_url, db_path=str(db), max_retries=0),
            stream_mode=["updates", "values"],
        ):
            if mode == "updates":
                updated = set(chunk)
            elif "distill_knowledge" in updated:
                snapshots.append(dict(chunk))
        return dict(graph.get_state(config).values), snapshots
    finally:
        checkpointer.close()
