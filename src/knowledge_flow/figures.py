"""Figures of TRT, DeepConf and RSA runs, read from the rollout store (for `kflow show`, `kflow report`,
notebooks).

- `trt_rounds`: per round, each thinker's strategy and answer, the selected answer, the agreement with it,
  how it was selected (the rule as applied, whether the previous best was kept, the verifier's or manager's
  call), and what the reflection or manager call changed.
- `deepconf_traces`: the online threshold and whether the filter could act at all (``online_filter``:
  ``inactive (budget B < window W)`` when the largest budget sent is below one confidence window), traces
  sampled, stopped by the client, cancelled by the consensus, kept out of votes, the tokens they cost (and how
  many of them are counted from what was received rather than reported by the server), an estimate of the
  tokens the stops and an early consensus saved, and the vote.
- `rsa_loops`: per loop, each member's answer and the members of the loop before it that it aggregated (the
  lineage), the loop's majority and agreement; the final answer.
- `run_figures`: the figures that fit a run's strategy (several for a run that has rounds and measures), and
  GenSelect's final-answer call (``final_select``) when the run made one.
- `totals`: the same over many runs (an evaluation's problems), and the calls outside the rollouts by kind.
- `trace_votes`: stored rollouts as the traces of a confidence vote (to re-grade with ``conf-vote``).

Everything above is plain JSON-ready data. For notebooks, pandas DataFrames of any run or evaluation (the
records of `knowledge_flow.evaluation.trajectories`, one row each):

- `rollouts_frame`: per rollout (answer, right or wrong, knowledge added, tokens, latency, ...);
- `iterations_frame`: per iteration of an evaluation (pass@1, solved at least once, final-answer accuracy,
  each with its 95% Wilson interval; tokens);
- `problems_frame`: per problem of an evaluation (gold, final answer, first right iteration, tokens, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from knowledge_flow.persistence.store import CallRow, RolloutRow, RolloutStore
from knowledge_flow.records import AnswerType, TraceVote
from knowledge_flow.strategies.confidence import share_of_leader
from knowledge_flow.strategies.genselect import FINAL
from knowledge_flow.strategies.policies import ConfVote, TraceMajority, parse_final_answer_rule, trace_tally
from knowledge_flow.text.answers import normalize

if TYPE_CHECKING:
    from pandas import DataFrame

STOPPED, BELOW, CANCELLED = "gconf_threshold", "below_threshold", "consensus_cancelled"
#: TRT's calls (``kf_calls.kind``); GenSelect's are `strategies.genselect.SELECT` and `FINAL`.
TRT_CALLS = ("plan", "reflect", "verify", "manage")
#: `usage_source` values whose token counts the server reported to the end.
SERVER_COUNTED = (None, "server", "not-sent")


def online_filter(budgets: Sequence[int], window: int | None) -> str:
    """``active``, or ``inactive (budget B < window W)`` when the largest generation budget sent to a trace
    is below one confidence window (nothing can then be stopped)."""
    largest = max(budgets, default=None)
    if window is None or largest is None or largest >= window:
        return "active"
    return f"inactive (budget {largest} < window {window})"


def _by_iteration(rows: Sequence[RolloutRow]) -> dict[int, list[RolloutRow]]:
    grouped: dict[int, list[RolloutRow]] = {}
    for row in rows:
        grouped.setdefault(row.iteration, []).append(row)
    return grouped


def _call_view(call: CallRow | None) -> dict[str, Any] | None:
    if call is None:
        return None
    return {
        "id": call.id,
        "outcome": call.outcome,
        "error": call.error,
        "prompt_tokens": call.prompt_tokens,
        "completion_tokens": call.completion_tokens,
    }


def trt_rounds(store: RolloutStore, run_id: str) -> dict[str, Any]:
    """Per round: strategies, answers, the selected answer, agreement, selection and the reflection after it."""
    run = store.get_run(run_id)
    if run is None:
        raise KeyError(f"no run {run_id!r}")
    answer_type: AnswerType = run.params.get("answer_type", "integer")
    calls = {call.id: call for call in store.calls(run_id)}
    selections = store.selections(run_id)
    rounds = []
    for iteration, rows in sorted(_by_iteration(store.rollouts(run_id)).items()):
        chosen = selections.get(iteration)
        selected = next((row for row in rows if row.rank == 0), None)
        selected_answer = chosen.answer if chosen is not None else selected.answer if selected is not None else None
        key = normalize(selected_answer, answer_type)
        agreeing = sum(1 for row in rows if key is not None and normalize(row.answer, answer_type) == key)
        manager = calls.get(f"{run_id}:{iteration}:manage")
        rounds.append(
            {
                "round": iteration + 1,
                "thinkers": [
                    {
                        "thinker": row.index,
                        "key_technique": (row.strategy or {}).get("key_technique"),
                        "what_to_try": (row.strategy or {}).get("what_to_try"),
                        "answer": row.answer,
                        "selected": row.rank == 0,
                        "error": row.error,
                        "completion_tokens": row.completion_tokens,
                    }
                    for row in rows
                ],
                "selected_answer": selected_answer,
                "rule": chosen.rule if chosen is not None else None,
                "kept_previous": bool(chosen is not None and chosen.kept_previous),
                "votes": chosen.votes if chosen is not None else None,
                "agreement": round(agreeing / len(rows), 4) if rows else 0.0,
                "verifier": _call_view(calls.get(f"{run_id}:{iteration}:verify")),
                "manager": _call_view(manager),
                "reflection_after": _call_view(manager or calls.get(f"{run_id}:{iteration + 1}:reflect")),
            }
        )
    extra = list(calls.values())
    return {
        "run_id": run_id,
        "strategy": run.strategy,
        "plan": _call_view(calls.get(f"{run_id}:0:plan")),
        "rounds": rounds,
        "final_answer": run.final_answer,
        "calls": len(extra),
        "call_tokens": {
            "prompt_tokens": sum(call.prompt_tokens for call in extra),
            "completion_tokens": sum(call.completion_tokens for call in extra),
        },
    }


def trace_votes(rows: Sequence[RolloutRow]) -> list[TraceVote]:
    """Stored rollouts as the traces of a confidence vote, e.g. to re-grade a run with
    ``policies.final_answer("conf-vote:...", answers, answer_type, trace_votes(store.rollouts(run_id)))``."""
    return [
        TraceVote(
            rollout_id=row.id,
            iteration=row.iteration,
            answer=row.answer,
            measures=row.measures,
            counted=row.error is None and row.stop_reason is None,
        )
        for row in rows
    ]


def deepconf_traces(store: RolloutStore, run_id: str) -> dict[str, Any]:
    """The online filter's figures: threshold, stops, tokens paid and saved (estimated), the vote."""
    run = store.get_run(run_id)
    if run is None:
        raise KeyError(f"no run {run_id!r}")
    params = run.params
    answer_type: AnswerType = params.get("answer_type", "integer")
    rows = list(store.rollouts(run_id))
    stopped = [row for row in rows if row.stop_reason == STOPPED]
    cancelled = [row for row in rows if row.stop_reason == CANCELLED]
    below = [row for row in rows if row.stop_reason == BELOW]
    finished = [row for row in rows if row.error is None and row.finish_reason not in ("cancelled", None)]
    mean_finished = sum(row.completion_tokens for row in finished) / len(finished) if finished else 0.0
    saved_by_stops = sum(max(0.0, mean_finished - row.completion_tokens) for row in stopped)
    warmup = int(params.get("warmup_traces") or 0) if run.strategy == "deepconf" else 0
    thinkers = int(params.get("thinkers", 1))
    iterations = int(params.get("iterations", 1))
    budget = params.get("trace_budget") or ((warmup + thinkers * (iterations - 1)) if warmup else thinkers * iterations)
    not_sampled = max(0, int(budget) - len(rows))
    window = next((row.conf_window for row in rows if row.conf_window), params.get("confidence_window"))
    budgets = [row.max_tokens_sent for row in rows if row.max_tokens_sent is not None]
    traces = trace_votes(rows)
    rule = parse_final_answer_rule(str(params.get("final_answer_rule", "last")))
    # the final-answer rule's weights: its measure, one vote each for majority-traces, else the lowest group
    measure = rule.measure if isinstance(rule, ConfVote) else None if isinstance(rule, TraceMajority) else "lowest"
    totals, _, original = trace_tally(traces, answer_type, measure)
    thresholds = [run.confidence_threshold] + [row.conf_threshold for row in rows]
    thresholds = [value for value in thresholds if value is not None]
    return {
        "run_id": run_id,
        "strategy": run.strategy,
        "threshold": thresholds[0] if thresholds else None,
        "online_filter": online_filter(budgets, window),
        "window": window,
        "keep_percent": params.get("confidence_keep"),
        "traces": len(rows),
        "warmup_traces": min(warmup, len(rows)),
        "budget": budget,
        "stopped": len(stopped),
        "consensus_cancelled": len(cancelled),
        "below_threshold": len(below),
        "counted": sum(1 for trace in traces if trace["counted"]),
        "failed": sum(1 for row in rows if row.error is not None),
        "tokens": {
            "completion": sum(row.completion_tokens for row in rows),
            "paid_by_stopped": sum(row.completion_tokens for row in stopped),
            "paid_by_cancelled": sum(row.completion_tokens for row in cancelled),
            "counted_by_client": sum(row.completion_tokens for row in rows if row.usage_source not in SERVER_COUNTED),
            "mean_finished_trace": round(mean_finished, 1),
            "saved_by_stops_estimate": round(saved_by_stops),
            "not_sampled_traces": not_sampled,
            "saved_by_consensus_estimate": round(not_sampled * mean_finished),
        },
        "vote": {
            "measure": measure,
            "weights": {original[key]: round(weight, 6) for key, weight in totals.items()},
            "leader_share": round(share_of_leader(totals), 4) if totals else 0.0,
        },
        "final_answer": run.final_answer,
    }


def position(rollout_id: str) -> str:
    """``iteration.thinker`` of a rollout id ``{run}:{iteration}:{index}``."""
    _, iteration, index = rollout_id.rsplit(":", 2)
    return f"{iteration}.{index}"


def rsa_loops(store: RolloutStore, run_id: str) -> dict[str, Any]:
    """Per loop: each member's answer and the members of the loop before it that it aggregated (the lineage),
    the loop's majority and the agreement with it; the final answer."""
    run = store.get_run(run_id)
    if run is None:
        raise KeyError(f"no run {run_id!r}")
    answer_type: AnswerType = run.params.get("answer_type", "integer")
    selections = store.selections(run_id)
    loops = []
    for iteration, rows in sorted(_by_iteration(store.rollouts(run_id)).items()):
        chosen = selections.get(iteration)
        majority = chosen.answer if chosen is not None else None
        key = normalize(majority, answer_type)
        agreeing = sum(1 for row in rows if key is not None and normalize(row.answer, answer_type) == key)
        loops.append(
            {
                "loop": iteration,
                "members": [
                    {
                        "member": f"{iteration}.{row.index}",
                        "answer": row.answer,
                        "aggregated": [position(parent) for parent in row.parents or []],
                        "error": row.error,
                        "completion_tokens": row.completion_tokens,
                    }
                    for row in rows
                ],
                "majority": majority,
                "rule": chosen.rule if chosen is not None else None,
                "agreement": round(agreeing / len(rows), 4) if rows else 0.0,
            }
        )
    return {
        "run_id": run_id,
        "strategy": run.strategy,
        "aggregation_size": run.params.get("aggregation_size"),
        "aggregation_pick": run.params.get("aggregation_pick"),
        "loops": loops,
        "final_answer": run.final_answer,
    }


def run_figures(store: RolloutStore, run_id: str) -> dict[str, Any]:
    """`trt_rounds` for runs with strategies per thinker or TRT's calls, `deepconf_traces` for runs with
    confidence measures, `rsa_loops` for runs whose rollouts aggregate others; several keys may be there."""
    run = store.get_run(run_id)
    if run is None:
        raise KeyError(f"no run {run_id!r}")
    figures: dict[str, Any] = {"run_id": run_id, "strategy": run.strategy}
    rows = store.rollouts(run_id)
    trt_calls = any(call.kind in TRT_CALLS for call in store.calls(run_id))
    if run.strategy == "trt" or any(row.strategy_json for row in rows) or trt_calls:
        figures["trt"] = trt_rounds(store, run_id)
    if run.strategy == "deepconf" or any(row.conf_lowest is not None for row in rows):
        figures["deepconf"] = deepconf_traces(store, run_id)
    if run.strategy == "rsa" or any(row.parents_json for row in rows):
        figures["rsa"] = rsa_loops(store, run_id)
    final = next((call for call in store.calls(run_id) if call.kind == FINAL), None)
    if final is not None:
        figures["final_select"] = _call_view(final)
    return figures


def totals(store: RolloutStore, run_ids: Sequence[str]) -> dict[str, Any]:
    """Over many runs (an evaluation's problems): TRT's mean agreement and the share of rounds whose selected
    answer changed, per round; DeepConf's traces, stops and tokens; the tokens of calls outside the rollouts."""
    per_round: dict[int, list[tuple[float, bool]]] = {}
    deepconf = {
        "runs": 0,
        "traces": 0,
        "stopped": 0,
        "consensus_cancelled": 0,
        "below_threshold": 0,
        "counted": 0,
        "filter_inactive": 0,
    }
    tokens = {
        "paid_by_stopped": 0,
        "paid_by_cancelled": 0,
        "counted_by_client": 0,
        "saved_by_stops_estimate": 0,
        "saved_by_consensus_estimate": 0,
    }
    inactive: list[str] = []
    calls: dict[str, Any] = {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "kinds": {}}
    for run_id in run_ids:
        for call in store.calls(run_id):
            calls["calls"] += 1
            calls["prompt_tokens"] += call.prompt_tokens
            calls["completion_tokens"] += call.completion_tokens
            calls["kinds"][call.kind] = calls["kinds"].get(call.kind, 0) + 1
        figures = run_figures(store, run_id)
        if "trt" in figures:
            trt = figures["trt"]
            previous = None
            for entry in trt["rounds"]:
                changed = previous is not None and entry["selected_answer"] != previous
                per_round.setdefault(entry["round"], []).append((entry["agreement"], changed))
                previous = entry["selected_answer"]
        if "deepconf" in figures:
            found = figures["deepconf"]
            deepconf["runs"] += 1
            for key in ("traces", "stopped", "consensus_cancelled", "below_threshold", "counted"):
                deepconf[key] += found[key]
            if found["online_filter"] != "active":
                deepconf["filter_inactive"] += 1
                inactive.append(found["online_filter"])
            for key in tokens:
                tokens[key] += found["tokens"][key]
    return {
        "runs": len(run_ids),
        "trt_rounds": [
            {
                "round": number,
                "runs": len(values),
                "mean_agreement": round(sum(a for a, _ in values) / len(values), 4),
                "answer_changed_share": round(sum(1 for _, c in values if c) / len(values), 4),
            }
            for number, values in sorted(per_round.items())
        ],
        "deepconf": {**deepconf, "tokens": tokens, "online_filter": inactive[0] if inactive else "active"},
        "calls": calls,
    }


# --- DataFrames ---------------------------------------------------------------------------------------------
def _frame(records: list[dict[str, Any]]) -> DataFrame:
    import pandas

    return pandas.DataFrame.from_records(records)


def rollouts_frame(
    store: RolloutStore, *, eval_id: str | None = None, run_ids: Sequence[str] | None = None
) -> DataFrame:
    """One row per stored rollout of an evaluation (with its problem's position, id and gold answer) or of
    the runs `run_ids`."""
    from knowledge_flow.evaluation.trajectories import evaluation_rollouts, rollout_records

    if (eval_id is None) == (run_ids is None):
        raise ValueError("give either eval_id or run_ids")
    return _frame(evaluation_rollouts(store, eval_id) if eval_id is not None else rollout_records(store, run_ids or []))


def iterations_frame(store: RolloutStore, eval_id: str, answer_rule: str = "default") -> DataFrame:
    """One row per iteration of an evaluation: accuracies with their 95% Wilson intervals, tokens."""
    from knowledge_flow.evaluation.report import build_report
    from knowledge_flow.evaluation.trajectories import iteration_records

    return _frame(iteration_records(build_report(store, eval_id, answer_rule)))


def problems_frame(store: RolloutStore, eval_id: str) -> DataFrame:
    """One row per problem of an evaluation: gold, final answer, answers, first right iteration, tokens."""
    from knowledge_flow.evaluation.trajectories import problem_records

    return _frame(problem_records(store, eval_id))
