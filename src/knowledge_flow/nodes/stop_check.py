"""`stop_check`: the stop policy (fixed iteration budget) and the final answer (the last rollout's)."""

from __future__ import annotations

from typing import Any, Literal

from langgraph.runtime import Runtime

from knowledge_flow.context import Context
from knowledge_flow.nodes.common import store_of
from knowledge_flow.state import State


def final_answer(answers: list[str | None]) -> str | None:
    """The last rollout's answer (None when the last rollout gave none)."""
    return answers[-1] if answers else None


def stop_check(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    if state.get("iteration", 0) < state["params"]["iterations"]:
        return {}
    answer = final_answer(state.get("answers", []))
    store_of(runtime).update_run(state["run_id"], status="done", final_answer=answer)
    return {"status": "done", "final_answer": answer}


def route_after_stop_check(state: State) -> Literal["solve", "__end__"]:
    return "__end__" if state.get("status") == "done" else "solve"
