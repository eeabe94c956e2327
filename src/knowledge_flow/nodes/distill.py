"""`distill_knowledge`: keep the best thinkers, then let the strategy update knowledge and reference."""

from __future__ import annotations

import json
from typing import Any

from langgraph.runtime import Runtime
from langgraph.types import Overwrite

from knowledge_flow import thinkers
from knowledge_flow.context import Context
from knowledge_flow.endpoint.client import endpoint_errors
from knowledge_flow.nodes.common import context_of, step_of, store_of
from knowledge_flow.state import KnowledgeItem, State


def knowledge_update(old: list[KnowledgeItem], new: list[KnowledgeItem]) -> list[KnowledgeItem] | Overwrite:
    """The write that turns the record `old` into `new`: only the new items when the record grew, so each
    item is stored once; the whole record when a strategy replaced or dropped items."""
    if new[: len(old)] == old:
        return new[len(old) :]
    return Overwrite(new)


def distill_knowledge(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    params = state["params"]
    candidates = state.get("candidates") or []
    if not candidates:
        raise RuntimeError("distill_knowledge ran without parsed rollouts")
    kept = thinkers.select(candidates, params["topk_thinkers"], params["diversity_weight"], params["answer_type"])
    best = kept[0]
    threshold = params["uncertainty_threshold"]
    # An uncertain iteration keeps the reference it has; with none yet, any reference beats none.
    update_reference = (
        threshold is None
        or best["confidence"] is None
        or best["confidence"] >= threshold
        or state.get("reference_answer") is None
    )
    strategy, step, _ = step_of(state, runtime)
    with endpoint_errors((context_of(runtime).api_key,)):  # token counts of new items
        result = strategy.distill(step, best, kept, update_reference)

    store = store_of(runtime)
    added = dict(result.added)
    for rank, candidate in enumerate(kept):
        rid = candidate["rollout_id"]
        store.update_rollout(
            rid,
            rank=rank,
            changed=result.changed if rank == 0 else None,
            knowledge_added=json.dumps(added[rid]) if rid in added else None,
        )
    iteration = state.get("iteration", 0) + 1
    store.update_run(state["run_id"], iterations_done=iteration)

    usage = state.get("usage") or {"prompt_tokens": 0, "completion_tokens": 0}
    update: dict[str, Any] = {
        "reference": result.reference,
        "reference_answer": result.reference_answer,
        "answers": [best["answer"]],
        "reported": [bool(result.changed) and best["error_report"] is not None],
        "usage": {
            "prompt_tokens": usage["prompt_tokens"] + sum(c["prompt_tokens"] for c in candidates),
            "completion_tokens": usage["completion_tokens"] + sum(c["completion_tokens"] for c in candidates),
        },
        "iteration": iteration,
        "candidates": [],
        "failed_streak": state.get("failed_streak", 0) + 1 if all(c["error"] for c in candidates) else 0,
    }
    knowledge = knowledge_update(state.get("knowledge", []), result.knowledge)
    if knowledge:  # an unchanged record is not written again
        update["knowledge"] = knowledge
    if params["dynamic_temperature"] and params["thinkers"] > 1:
        update["temperature_range"] = thinkers.next_range(
            state["temperature_range"], candidates, threshold, params["answer_type"]
        )
    return update
