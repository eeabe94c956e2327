"""`extract_answer`: parse the stored rollout into small fields (answer, summary, error report)."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from knowledge_flow.context import Context
from knowledge_flow.nodes.common import store_of
from knowledge_flow.parsing import parse_rollout
from knowledge_flow.state import CurrentRollout, State


def extract_answer(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    rid = state.get("pending_rollout")
    store = store_of(runtime)
    row = store.get_rollout(rid) if rid else None
    if row is None:
        raise RuntimeError(f"rollout {rid!r} is missing from the rollout store {store.path}")
    parsed = parse_rollout(row.content, row.reasoning, state["params"]["answer_type"])
    store.update_rollout(
        row.id, answer=parsed.answer, summary=parsed.summary, error_report=parsed.error_report, parsed=True
    )
    current = CurrentRollout(
        rollout_id=row.id,
        answer=parsed.answer,
        summary=parsed.summary,
        error_report=parsed.error_report,
        finish_reason=row.finish_reason,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
    )
    return {"current": current, "pending_rollout": None}
