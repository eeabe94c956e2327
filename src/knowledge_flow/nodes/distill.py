"""`distill_knowledge`: screen the iteration's rollouts, select among the candidates (the rollouts, and the
previous best where the run carries one: `strategies.selection`) by confidence, vote, confidence-weighted vote
or the verifier's or manager's verdict (`strategies.thinkers`), record how (``kf_selections``), then let the
strategy update knowledge and reference."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from langgraph.runtime import Runtime
from langgraph.types import Overwrite

from knowledge_flow.context import Context
from knowledge_flow.endpoint.client import endpoint_errors
from knowledge_flow.nodes.common import context_of, guarded, step_of, store_of
from knowledge_flow.state import Candidate, KnowledgeItem, Selection, State, TraceVote
from knowledge_flow.strategies import thinkers
from knowledge_flow.strategies.policies import uses_traces
from knowledge_flow.strategies.selection import with_previous
from knowledge_flow.text.answers import normalize


def knowledge_update(old: list[KnowledgeItem], new: list[KnowledgeItem]) -> list[KnowledgeItem] | Overwrite:
    """The write that turns the record `old` into `new`: only the new items when the record grew, so each
    item is stored once; the whole record when a strategy replaced or dropped items."""
    if new[: len(old)] == old:
        return new[len(old) :]
    return Overwrite(new)


def rule_used(state: State, candidates: list[Candidate], best: Candidate) -> str:
    """The select rule as it was applied: a verifier's or manager's fallback to the vote (``vote (no
    verdict)``), and how a tied vote was settled (``vote (tie: confidence)``, ``vote (tie: thinker order)``)."""
    params = state["params"]
    rule = params.get("select_rule", "confidence")
    if rule == "confidence":
        return rule
    notes: list[str] = []
    if rule in thinkers.CALL_RULES:
        verdict = state.get("verdict")
        if verdict is not None and verdict["rollout_id"] == best["rollout_id"]:
            return rule
        if verdict is not None:
            notes.append("no verdict")
        else:
            notes.append("no disagreement to verify" if rule == "verifier" else "no candidate with an answer")
    weighted = rule == "conf-vote"
    score_by = params.get("confidence_score", "mean-logprob")
    tie = thinkers.tie_break(candidates, params["answer_type"], score_by, weighted)
    if tie is not None:
        notes.append(f"tie: {tie}")
    name = "conf-vote" if weighted else "vote"
    return f"{name} ({'; '.join(notes)})" if notes else name


def selection_of(state: State, candidates: list[Candidate], best: Candidate) -> Selection:
    params = state["params"]
    answer_type = params["answer_type"]
    rule = params.get("select_rule", "confidence")
    score_by = params.get("confidence_score", "mean-logprob")
    votes = thinkers.tally(candidates, answer_type, score_by if rule == "conf-vote" else None)
    key = normalize(best["answer"], answer_type)
    agreeing = sum(1 for c in candidates if key is not None and normalize(c["answer"], answer_type) == key)
    selection = Selection(
        rule=rule_used(state, candidates, best),
        rollout_id=best["rollout_id"],
        answer=best["answer"],
        votes={answer: round(weight, 6) for answer, weight in votes.items()},
        agreement=round(agreeing / len(candidates), 4) if candidates else 0.0,
    )
    if best.get("previous_best"):
        selection["kept_previous"] = True
    return selection


@guarded
def distill_knowledge(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    params = state["params"]
    if not state.get("candidates"):
        raise RuntimeError("distill_knowledge ran without parsed rollouts")
    strategy, step, _ = step_of(state, runtime)
    screened = strategy.screen(step, list(state.get("candidates") or []))
    candidates = screened.candidates
    pool = with_previous(state.get("best"), candidates)
    verdict = state.get("verdict")
    kept = thinkers.select(
        pool,
        params["topk_thinkers"] + len(pool) - len(candidates),
        params["diversity_weight"],
        params["answer_type"],
        rule=params.get("select_rule", "confidence"),
        score_by=params.get("confidence_score", "mean-logprob"),
        chosen=verdict["rollout_id"] if verdict else None,
    )
    best = kept[0]
    selection = selection_of(state, pool, best)
    threshold = params["uncertainty_threshold"]
    # An uncertain iteration keeps the reference it has; with none yet, any reference beats none.
    update_reference = (
        threshold is None
        or best["confidence"] is None
        or best["confidence"] >= threshold
        or state.get("reference_answer") is None
    )
    seen = State(**{**state, **screened.state, "candidates": candidates, "selection": selection})  # type: ignore[typeddict-item]
    with endpoint_errors((context_of(runtime).api_key,)):  # token counts of new items
        result = strategy.distill(replace(step, state=seen), best, kept, update_reference)

    store = store_of(runtime)
    store.record_selection(state["run_id"], state.get("iteration", 0), selection)
    added = dict(result.added)
    # ranks among the iteration's own rollouts: a previous best selected again ranks none of them first
    ranks = {candidate["rollout_id"]: rank for rank, candidate in enumerate(kept)}
    before = {c["rollout_id"]: c.get("excluded") for c in state.get("candidates") or []}
    for candidate in candidates:
        rid = candidate["rollout_id"]
        values: dict[str, Any] = {}
        if rid in ranks:
            values |= {
                "rank": ranks[rid],
                "changed": result.changed if ranks[rid] == 0 else None,
                "knowledge_added": json.dumps(added[rid]) if rid in added else None,
            }
        if candidate.get("excluded") and candidate.get("excluded") != before.get(rid):
            values["stop_reason"] = candidate["excluded"]
        if values:
            store.update_rollout(rid, **values)
    iteration = state.get("iteration", 0) + 1
    run_values: dict[str, Any] = {"iterations_done": iteration}
    if screened.state.get("confidence_threshold") is not None:
        run_values["confidence_threshold"] = screened.state["confidence_threshold"]
    store.update_run(state["run_id"], **run_values)

    usage = state.get("usage") or {"prompt_tokens": 0, "completion_tokens": 0}
    update: dict[str, Any] = {
        **screened.state,
        **result.state,
        "reference": result.reference,
        "reference_answer": result.reference_answer,
        "answers": [best["answer"]],
        "changed_with_report": [bool(result.changed) and best["error_report"] is not None],
        "usage": {
            "prompt_tokens": usage["prompt_tokens"] + sum(c["prompt_tokens"] for c in candidates),
            "completion_tokens": usage["completion_tokens"] + sum(c["completion_tokens"] for c in candidates),
        },
        "iteration": iteration,
        "candidates": [],
        "failed_streak": state.get("failed_streak", 0) + 1 if all(c["error"] for c in candidates) else 0,
    }
    # a single thinker chosen by confidence needs no record of the choice (checkpoints stay as small as before)
    if len(pool) > 1 or selection["rule"] != "confidence":
        update["selection"] = selection
    if verdict is not None:
        update["verdict"] = None
    if uses_traces(params["stop_policy"], params["final_answer_rule"]):
        update["traces"] = [
            TraceVote(
                rollout_id=c["rollout_id"],
                iteration=iteration - 1,
                answer=c["answer"],
                measures=c.get("measures"),
                counted=c["error"] is None and not c.get("excluded"),
            )
            for c in candidates
        ]
    knowledge = knowledge_update(state.get("knowledge", []), result.knowledge)
    if knowledge:  # an unchanged record is not written again
        update["knowledge"] = knowledge
    if params["dynamic_temperature"] and params["thinkers"] > 1:
        update["temperature_range"] = thinkers.next_range(
            state["temperature_range"],
            candidates,
            threshold,
            params["answer_type"],
            params.get("confidence_score", "mean-logprob"),
        )
    return update
