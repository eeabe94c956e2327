"""`prepare`: start a run: resolve and validate parameters, reset the run state, register the run."""

from __future__ import annotations

import uuid
from typing import Any

from langgraph.config import get_config
from langgraph.runtime import Runtime
from langgraph.types import Overwrite

from knowledge_flow.context import Context
from knowledge_flow.endpoint.urls import shown_url
from knowledge_flow.nodes.common import context_of, store_of
from knowledge_flow.params import resolve_run
from knowledge_flow.state import State
from knowledge_flow.user_files import check_problem
from knowledge_flow.version import package_version

#: State of TRT, DeepConf and thinker selection, and its value at the start of a run on a thread that held one
#: (a first run never writes them, so runs that do not use them keep checkpoints as small as before).
RUN_FIELDS: dict[str, Any] = {
    "selection": None,
    "verdict": None,
    "confidence_threshold": None,
    "thinker_strategies": [],
    "strategy_history": [],
    "reflection": None,
    "best": None,
}


def prepare(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    problem = state.get("problem")
    if not isinstance(problem, str) or not problem.strip():
        raise ValueError("problem must be a non-empty string")
    check_problem(problem)
    params, prompt_set = resolve_run(state)
    run_id = uuid.uuid4().hex
    thread_id = str((get_config().get("configurable") or {}).get("thread_id") or run_id)
    store = store_of(runtime)
    store.save_prompt_set(prompt_set)
    store.create_run(
        run_id=run_id,
        thread_id=thread_id,
        problem=problem,
        params=dict(params),
        base_url=shown_url(context_of(runtime).base_url),
        package_version=package_version(),
    )
    update: dict[str, Any] = {
        "run_id": run_id,
        "thread_id": thread_id,
        "params": params,
        "iteration": 0,
        "pending_rollouts": [],
        "candidates": [],
        "temperature_range": [params["min_temperature"], params["max_temperature"]],
        "stopped_early": False,
        "failed_streak": 0,
        "reference": None,
        "reference_answer": None,
        "usage": {"prompt_tokens": 0, "completion_tokens": 0},
        "status": "running",
        "final_answer": None,
    }
    if state.get("run_id"):  # a new run on a thread that held one: what that run left starts empty again
        update |= {"answers": Overwrite([]), "changed_with_report": Overwrite([]), "knowledge": Overwrite([])}
        update |= RUN_FIELDS | {"traces": Overwrite([])}
    return update
