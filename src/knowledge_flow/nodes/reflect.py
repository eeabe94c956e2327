"""LLM calls outside the rollouts, as graph steps of their own: `reflect` (before an iteration, for strategies
that reflect: TRT's planning call before round 1, its reflection before every later round unless the manager
does its work), `verify` (after `extract_answer`, for the select rule `verifier`: one call picks the
iteration's answer among its candidates) and `manage` (after `extract_answer`, for the select rule
`manager`: one call per iteration picks the answer and writes the lesson and the next strategies).

Each call is stored in the rollout store (``kf_calls``) under ``{run_id}:{iteration}:{kind}`` before it is
used; when a step runs again after a crash, the stored call is read back, never requested again. A call that
fails for good (see `knowledge_flow.nodes.calls`) is stored with its reason and the run goes on: a failed
planning or reflection call leaves the strategies as they were, a failed verifier or manager leaves the choice
to the vote. Their tokens count in the run's usage.
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
from knowledge_flow.strategies import Reflecting, RolloutPrompt, RoundRollout, Step, get_strategy
from knowledge_flow.strategies.selection import choice_in, with_previous
from knowledge_flow.strategies.selection import eligible as can_choose
from knowledge_flow.strategies.trt import MANAGE, VERIFY
from knowledge_flow.strategies.trt_replies import PLAN, REFLECT
from knowledge_flow.text.answers import normalize
from knowledge_flow.text.parsing import final_text

__all__ = ["manage", "reflect", "route_after_extract", "route_after_prepare", "verify"]


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
    return applied(state, runtime, row, update, update.get("reflection"))


def applied(
    state: State, runtime: Runtime[Context], row: CallRow, update: dict[str, Any], outcome: Any
) -> dict[str, Any]:
    """`update` as a state write (a grown knowledge record writes its new items only), with the call's tokens;
    `outcome` is stored with the call."""
    if "knowledge" in update:
        change = knowledge_update(state.get("knowledge", []), update.pop("knowledge"))
        if change:
            update["knowledge"] = change
    store_of(runtime).update_call(row.id, outcome_json=json.dumps(outcome, ensure_ascii=False))
    return {**update, "usage": with_usage(state, row)}


def eligible(state: State) -> list[Candidate]:
    """The candidates a verifier or manager chooses among: the previous best (when the run carries one), then
    the rollouts, those with an answer that may vote."""
    pool = with_previous(state.get("best"), state.get("candidates") or [])
    return can_choose(pool, state["params"]["answer_type"])


def choosing_call(
    state: State, runtime: Runtime[Context], kind: str
) -> tuple[Reflecting, Step, list[Candidate], CallRow]:
    """The iteration's verifier or manager call over its candidates: the stored one, else sent and stored."""
    strategy, step, served = step_of(state, runtime)
    reflecting = cast(Reflecting, strategy)
    candidates = eligible(state)
    row = store_of(runtime).get_call(call_id(state["run_id"], state.get("iteration", 0), kind))
    if row is None:
        build = reflecting.verify_prompt if kind == VERIFY else reflecting.manage_prompt
        row = stored_call(state, runtime, served, kind, build(step, candidates))
    return reflecting, step, candidates, row


@guarded
def verify(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    _, _, candidates, row = choosing_call(state, runtime, VERIFY)
    text = reply_text(row)
    number = choice_in(text, len(candidates)) if text is not None else None
    chosen = candidates[number - 1]["rollout_id"] if number is not None else None
    error = row.error or (None if number is not None else "no valid selected_solution_id in the reply")
    verdict = Verdict(call_id=row.id, rollout_id=chosen, error=error)
    outcome = {"selected_solution_id": number, "rollout_id": chosen, "error": error}
    return applied(state, runtime, row, {"verdict": verdict}, outcome)


@guarded
def manage(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    reflecting, step, candidates, row = choosing_call(state, runtime, MANAGE)
    update = reflecting.apply_manager(step, candidates, row.id, reply_text(row))
    verdict: Verdict = update["verdict"]
    number = next((n for n, c in enumerate(candidates, 1) if c["rollout_id"] == verdict["rollout_id"]), None)
    outcome = {**update["reflection"], "selected_solution_id": number, "rollout_id": verdict["rollout_id"]}
    return applied(state, runtime, row, update, outcome)


def route_after_prepare(state: State) -> Literal["reflect", "solve"]:
    return "reflect" if get_strategy(state["params"]["strategy"]).reflects else "solve"


def route_after_extract(state: State) -> Literal["verify", "manage", "distill_knowledge"]:
    """The manager runs every iteration that has a candidate with an answer; the verifier only when the
    candidates disagree."""
    params = state["params"]
    rule = params.get("select_rule")
    if rule == "manager":
        return "manage" if eligible(state) else "distill_knowledge"
    if rule != "verifier":
        return "distill_knowledge"
    answers = {normalize(c["answer"], params["answer_type"]) for c in eligible(state)}
    return "verify" if len(answers) >= 2 else "distill_knowledge"
