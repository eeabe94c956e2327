"""`extract_answer`: parse each stored rollout of the iteration into small fields."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from knowledge_flow.context import Context
from knowledge_flow.nodes.common import guarded, step_of, store_of
from knowledge_flow.state import Candidate, State
from knowledge_flow.text.parsing import parse_rollout


@guarded
def extract_answer(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    params = state["params"]
    strategy, step, _ = step_of(state, runtime)
    rules = step.rules
    store = store_of(runtime)
    candidates: list[Candidate] = []
    for rid in state.get("pending_rollouts") or []:
        row = store.get_rollout(rid)
        if row is None:
            raise RuntimeError(f"rollout {rid!r} is missing from the rollout store {store.path}")
        parsed = parse_rollout(
            row.text_to_parse(),
            row.reasoning,
            params["answer_type"],
            strategy.section_names(rules),
            strategy.report_section(rules),
        )
        store.update_rollout(
            row.id,
            answer=parsed.answer,
            summary=parsed.summary,
            error_report=parsed.error_report,
            parsed=True,
            parsed_from=parsed.parsed_from if row.error is None else None,
        )
        candidates.append(
            Candidate(
                rollout_id=row.id,
                answer=parsed.answer,
                summary=parsed.summary_raw,
                error_report=parsed.error_report,
                extras=strategy.extras(parsed, rules),
                finish_reason=row.finish_reason,
                prompt_tokens=row.prompt_tokens,
                completion_tokens=row.completion_tokens,
                temperature=row.temperature if row.temperature is not None else params["temperature"],
                confidence=row.confidence,
                error=row.error,
                thinker=row.index,
                strategy=row.strategy,  # type: ignore[typeddict-item]
                measures=row.measures,
                excluded=row.stop_reason,
            )
        )
    if not candidates:
        raise RuntimeError("extract_answer ran without rollouts to parse")
    return {"candidates": candidates, "pending_rollouts": []}
