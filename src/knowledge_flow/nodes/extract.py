"""`extract_answer`: parse each stored rollout of the iteration into small fields."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from knowledge_flow.context import Context
from knowledge_flow.nodes.common import store_of
from knowledge_flow.parsing import parse_rollout
from knowledge_flow.state import CurrentRollout, State
from knowledge_flow.strategies import get_strategy


def extract_answer(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    params = state["params"]
    strategy = get_strategy(params["strategy"])
    store = store_of(runtime)
    candidates: list[CurrentRollout] = []
    for rid in state.get("pending_rollouts") or []:
        row = store.get_rollout(rid)
        if row is None:
            raise RuntimeError(f"rollout {rid!r} is missing from the rollout store {store.path}")
        text = strategy.text_to_parse(row.messages, row.content)
        parsed = parse_rollout(text, row.reasoning, params["answer_type"], strategy.section_names)
        store.update_rollout(
            row.id, answer=parsed.answer, summary=parsed.summary, error_report=parsed.error_report, parsed=True
        )
        candidates.append(
            CurrentRollout(
                rollout_id=row.id,
                answer=parsed.answer,
                summary=parsed.summary,
                error_report=parsed.error_report,
                extras={name: parsed.sections[name] for name in strategy.state_sections if name in parsed.sections},
                finish_reason=row.finish_reason,
                prompt_tokens=row.prompt_tokens,
                completion_tokens=row.completion_tokens,
                temperature=row.temperature if row.temperature is not None else params["temperature"],
                confidence=row.confidence,
                error=row.error,
            )
        )
    if not candidates:
        raise RuntimeError("extract_answer ran without rollouts to parse")
    return {"candidates": candidates, "pending_rollouts": []}
