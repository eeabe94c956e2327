"""`distill_knowledge`: the strategy updates the knowledge record and the reference solution."""

from __future__ import annotations

import json
from typing import Any

from langgraph.runtime import Runtime

from knowledge_flow.context import Context
from knowledge_flow.nodes.common import store_of
from knowledge_flow.state import State
from knowledge_flow.strategies import get_strategy


def distill_knowledge(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    current = state.get("current")
    if current is None:
        raise RuntimeError("distill_knowledge ran without a parsed rollout")
    result = get_strategy(state["params"]["strategy"]).distill(state, current)
    store = store_of(runtime)
    store.update_rollout(
        current["rollout_id"],
        changed=result.changed,
        knowledge_added=json.dumps(result.added) if result.added else None,
    )
    usage = state.get("usage") or {"prompt_tokens": 0, "completion_tokens": 0}
    iteration = state.get("iteration", 0) + 1
    store.update_run(state["run_id"], iterations_done=iteration)
    return {
        "knowledge": result.knowledge,
        "reference": result.reference,
        "reference_answer": result.reference_answer,
        "answers": [*state.get("answers", []), current["answer"]],
        "rollout_ids": [*state.get("rollout_ids", []), current["rollout_id"]],
        "usage": {
            "prompt_tokens": usage["prompt_tokens"] + current["prompt_tokens"],
            "completion_tokens": usage["completion_tokens"] + current["completion_tokens"],
        },
        "iteration": iteration,
        "current": None,
    }
