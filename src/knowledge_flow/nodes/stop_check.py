"""`stop_check`: the stop policy decides; the final-answer rule picks the answer (see `policies`)."""

from __future__ import annotations

from typing import Any, Literal

from langgraph.runtime import Runtime

from knowledge_flow.context import Context
from knowledge_flow.nodes.common import store_of
from knowledge_flow.policies import final_answer, should_stop
from knowledge_flow.state import State


def stop_check(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    params = state["params"]
    answers = state.get("answers", [])
    if not should_stop(
        params["stop_policy"], params["iterations"], answers, state.get("reported", []), params["answer_type"]
    ):
        return {}
    answer = final_answer(params["final_answer_rule"], answers, params["answer_type"])
    store_of(runtime).update_run(state["run_id"], status="done", final_answer=answer)
    return {"status": "done", "final_answer": answer, "stopped_early": len(answers) < params["iterations"]}


def route_after_stop_check(state: State) -> Literal["solve", "__end__"]:
    return "__end__" if state.get("status") == "done" else "solve"
