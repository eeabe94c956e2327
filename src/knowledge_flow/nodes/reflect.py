"""LLM calls outside the rollouts, as graph steps of their own: `reflect` (before an iteration, for strategies
that reflect: TRT's planning call before round 1, its reflection before every later round) and `verify` (after
`extract_answer`, for the select rule `verifier`: one call picks the iteration's answer among its rollouts).

Each call is stored in the rollout store (``kf_calls``) under ``{run_id}:{iteration}:{kind}`` before it is
used; when a step runs again after a crash, the stored call is read back, never requested again. A call that
fails for good (see `knowledge_flow.nodes.calls`) is stored with its reason and the run goes on: a failed
planning or reflection call leaves the strategies as they were, a failed verifier leaves the choice to the
vote. Their tokens count in the run's usage.
"""

from __future__ import annotations

import json
from typing import Any, Literal, cast

from langgraph.runtime import Runtime

from knowledge_flow.context import Context
from knowledge_flow.endpoint import Completion
from knowledge_flow.endpoint.served import Served
from knowledge_flow.nodes.calls import endpoint_of, request_once, sampling_of
from knowledge_flow.nodes.common import guarded, step_of, store_of
from knowledge_flow.nodes.distill import knowledge_update
from knowledge_flow.persistence.store import CallRow, RolloutStore, utcnow
from knowledge_flow.state import Candidate, State, ThinkerStrategy, Usage, Verdict
from knowledge_flow.strategies import Reflecting, RolloutPrompt, RoundRollout, get_strategy
from knowledge_flow.strategies.trt import PLAN, REFLECT, VERIFY, final_text
from knowledge_flow.text.answers import normalize

__all__ = ["reflect", "route_after_extract", "route_after_prepare", "verify"]


def call_id(run_id: str, iteration: int, kind: str) -> str:
    return f"{run_id}:{iteration}:{kind}"


def stored_call(state: State, runtime: Runtime[Context], served: Served, kind: str, prompt: RolloutPrompt) -> CallRow:
    """Send the call of this iteration and kind, and store it (with its reason when it failed)."""
    store = store_of(runtime)
    iteration = state.get("iteration", 0)
    identifier = call_id(state["run_id"], iteration, kind)
    params = state["params"]
    prepared, outcome = request_once(endpoint_of(runtime, served), prompt, sampling_of(params, prompt.max_tokens))
    error = outcome if isinstance(outcome, str) else None
    completion = outcome if isinstance(outcome, Completion) else Completion("", None, "error", 0, 0, 0.0)
    row = CallRow(
        id=identifier,
        run_id=state["run_id"],
        thread_id=state["thread_id"],
        iteration=iteration,
        kind=kind,
        created_at=utcnow(),
        prompt_json=json.dumps(prompt.messages, ensure_ascii=False),
        prefill=prompt.prefill,
        request_path=prepared.path if prepared is not None else None,
        max_tokens_sent=prepared.max_tokens if prepared is not None else None,
        content=completion.content,
        reasoning=completion.reasoning,
        finish_reason=completion.finish_reason,
        prompt_tokens=completion.prompt_tokens,
        completion_tokens=completion.completion_tokens,
        latency_s=completion.latency_s,
        temperature=params["temperature"],
        endpoint=completion.endpoint,
        error=error,
    )
    store.add_call(row)
    return row


def with_usage(state: State, row: CallRow) -> Usage:
    usage = state.get("usage") or {"prompt_tokens": 0, "completion_tokens": 0}
    return {
        "prompt_tokens": usage["prompt_tokens"] + row.prompt_tokens,
        "completion_tokens": usage["completion_tokens"] + row.completion_tokens,
    }


def reply_text(row: CallRow) -> str | None:
    return None if row.error is not None else final_text(row.content, row.reasoning)


def last_round(state: State, store: RolloutStore) -> list[RoundRollout]:
    """The rollouts of the iteration just distilled, with their outcomes from the strategy history."""
    history = state.get("strategy_history") or []
    outcomes = {e["rollout_id"]: e["outcome"] for e in history[-1]["entries"]} if history else {}
    rows = store.iteration_rollouts(state["run_id"], state.get("iteration", 0) - 1)
    return [
        RoundRollout(
            thinker=row.index,
            rollout_id=row.id,
            answer=row.answer,
            summary=row.summary,
            strategy=cast(ThinkerStrategy | None, row.strategy),
            outcome=outcomes.get(row.id, "failed" if row.error else "no answer"),
            error=row.error,
        )
        for row in rows
    ]


@guarded
def reflect(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    strategy, step, served = step_of(state, runtime)
    reflecting = cast(Reflecting, strategy)
    kind = PLAN if state.get("iteration", 0) == 0 else REFLECT
    store = store_of(runtime)
    existing = store.get_call(call_id(state["run_id"], state.get("iteration", 0), kind))
    if existing is None:
        rounds = [] if kind == PLAN else last_round(state, store)
        existing = stored_call(state, runtime, served, kind, reflecting.reflect_prompt(step, kind, rounds))
    row = existing
    update = reflecting.apply_reflection(step, kind, row.id, reply_text(row))
    if "knowledge" in update:
        change = knowledge_update(state.get("knowledge", []), update.pop("knowledge"))
        if change:
            update["knowledge"] = change
    store_of(runtime).update_call(row.id, outcome_json=json.dumps(update.get("reflection"), ensure_ascii=False))
    return {**update, "usage": with_usage(state, row)}


def eligible(state: State) -> list[Candidate]:
    """The candidates a verifier chooses among: rollouts with an answer that may vote."""
    answer_type = state["params"]["answer_type"]
    return [
        c
        for c in state.get("candidates") or []
        if c["error"] is None and not c.get("excluded") and normalize(c["answer"], answer_type) is not None
    ]


@guarded
def verify(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    strategy, step, served = step_of(state, runtime)
    reflecting = cast(Reflecting, strategy)
    candidates = eligible(state)
    row = store_of(runtime).get_call(call_id(state["run_id"], state.get("iteration", 0), VERIFY))
    if row is None:
        row = stored_call(state, runtime, served, VERIFY, reflecting.verify_prompt(step, candidates))
    text = reply_text(row)
    number = reflecting.parse_verdict(text, len(candidates)) if text is not None else None
    chosen = candidates[number - 1]["rollout_id"] if number is not None else None
    error = row.error or (None if number is not None else "no valid selected_solution_id in the reply")
    verdict = Verdict(call_id=row.id, rollout_id=chosen, error=error)
    store_of(runtime).update_call(
        row.id, outcome_json=json.dumps({"selected_solution_id": number, "rollout_id": chosen, "error": error})
    )
    return {"verdict": verdict, "usage": with_usage(state, row)}


def route_after_prepare(state: State) -> Literal["reflect", "solve"]:
    return "reflect" if get_strategy(state["params"]["strategy"]).reflects else "solve"


def route_after_extract(state: State) -> Literal["verify", "distill_knowledge"]:
    """The verifier runs only when the select rule asks for it and the rollouts disagree."""
    params = state["params"]
    if params.get("select_rule") != "verifier":
        return "distill_knowledge"
    answers = {normalize(c["answer"], params["answer_type"]) for c in eligible(state)}
    return "verify" if len(answers) >= 2 else "distill_knowledge"
