"""`stop_check`: the stop policy decides; the final-answer rule picks the answer (see `policies`).

The run goes on to `reflect` (strategies with a reflect step, e.g. trt, unless a manager call does its work)
or straight to `solve`; a run that stops skips the reflection that would only prepare an iteration never run.

A run whose rollouts keep failing is not done but failed: after `MAX_FAILED_STREAK` iterations in a row whose
every rollout failed (the cause is the setup, not the model), or when the budget ran out without a single
rollout that succeeded. A failed run can be resumed: its failed iterations are tried again.
"""

from __future__ import annotations

from typing import Any, Literal

from langgraph.runtime import Runtime

from knowledge_flow.context import Context
from knowledge_flow.nodes.common import store_of
from knowledge_flow.state import State
from knowledge_flow.strategies import get_strategy
from knowledge_flow.strategies.policies import final_answer, should_stop

MAX_FAILED_STREAK = 3


def stop_check(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    params = state["params"]
    answers = state.get("answers", [])
    streak = state.get("failed_streak", 0)
    failing = streak >= MAX_FAILED_STREAK or (streak >= len(answers) >= params["iterations"])
    traces = state.get("traces", [])
    if not failing and not should_stop(
        params["stop_policy"],
        params["iterations"],
        answers,
        state.get("changed_with_report", []),
        params["answer_type"],
        traces,
        params["final_answer_rule"],
    ):
        return {}
    answer = final_answer(params["final_answer_rule"], answers, params["answer_type"], traces)
    status = "failed" if failing else "done"
    store_of(runtime).update_run(state["run_id"], status=status, final_answer=answer)
    return {"status": status, "final_answer": answer, "stopped_early": len(answers) < params["iterations"]}


def route_after_stop_check(state: State) -> Literal["reflect", "solve", "__end__"]:
    if state.get("status") in ("done", "failed"):
        return "__end__"
    params = state["params"]
    # a manager call after each iteration already wrote the next one's strategies and lesson
    reflects = get_strategy(params["strategy"]).reflects and params.get("select_rule") != "manager"
    return "reflect" if reflects else "solve"
