"""What a run did, rollout by rollout, as plain records: for the HTML report, `knowledge_flow.figures`'
DataFrames and notebooks.

- `rollout_records`: one record per stored rollout of the given runs (answer, right or wrong when the gold
  answer is known, whether it was the iteration's chosen one, whether the answer changed, the knowledge it
  added, tokens, latency, how it finished).
- `problem_records`: one record per problem of an evaluation (gold, final answer, answers per iteration,
  first right iteration, tokens, knowledge items).
- `iteration_records`: one record per iteration of an evaluation's report, with 95% Wilson intervals.
- `knowledge_growth`: the knowledge record as it grew, after each iteration (from the items each rollout
  added).

Everything is JSON-ready (str, int, float, bool, None, lists and dicts of them).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from knowledge_flow.evaluation.compare import wilson
from knowledge_flow.evaluation.report import EvalReport
from knowledge_flow.evaluation.rows import EvalItemRow, EvalStore
from knowledge_flow.persistence.store import RolloutRow, RolloutStore
from knowledge_flow.records import AnswerType
from knowledge_flow.text.answers import equivalent


def first_line(text: str | None, limit: int = 200) -> str | None:
    """The first non-blank line of `text` (without a leading colon), cut at `limit` characters."""
    for line in (text or "").splitlines():
        line = line.strip().lstrip(":").strip()
        if line:
            return line if len(line) <= limit else line[: limit - 1] + "…"
    return None


def rollout_record(row: RolloutRow, gold: str | None, answer_type: AnswerType) -> dict[str, Any]:
    added = json.loads(row.knowledge_added) if row.knowledge_added else None
    return {
        "run_id": row.run_id,
        "thread_id": row.thread_id,
        "rollout_id": row.id,
        "iteration": row.iteration,
        "thinker": row.index,
        "chosen": row.rank == 0,
        "answer": row.answer,
        "correct": equivalent(gold, row.answer, answer_type) if gold is not None else None,
        "changed": row.changed,
        "knowledge_added": added,
        "summary_first_line": first_line(row.summary),
        "prompt_tokens": row.prompt_tokens,
        "completion_tokens": row.completion_tokens,
        "latency_s": round(row.latency_s, 3),
        "finish_reason": row.finish_reason,
        "error": row.error,
        "endpoint": row.endpoint,
    }


def rollout_records(
    store: RolloutStore, run_ids: Sequence[str], gold: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """Every stored rollout of `run_ids`, in order; `gold` maps a run id to its problem's gold answer."""
    records: list[dict[str, Any]] = []
    for run_id in run_ids:
        run = store.get_run(run_id)
        if run is None:
            raise KeyError(f"no run {run_id!r}")
        answer_type: AnswerType = run.params.get("answer_type", "integer")
        known = (gold or {}).get(run_id)
        records.extend(rollout_record(row, known, answer_type) for row in store.rollouts(run_id))
    return records


def run_of(store: RolloutStore, item: EvalItemRow) -> str | None:
    """The run of an evaluation's problem: the graded one, else the run its thread has started (None: none)."""
    if item.run_id:
        return item.run_id
    run = store.latest_run(item.thread_id)
    return run.run_id if run is not None else None


def evaluation_rollouts(store: RolloutStore, eval_id: str) -> list[dict[str, Any]]:
    """`rollout_records` of an evaluation's problems (those still running too), each with its problem's position,
    id and gold answer."""
    by_run = {run_id: item for item in EvalStore(store).eval_items(eval_id) if (run_id := run_of(store, item))}
    records = rollout_records(store, list(by_run), {run_id: item.gold for run_id, item in by_run.items()})
    return [
        {"position": by_run[r["run_id"]].position, "problem_id": by_run[r["run_id"]].problem_id, **r} for r in records
    ]


def knowledge_growth(rollouts: Sequence[Mapping[str, Any]], iterations: int) -> list[list[dict[str, Any]]]:
    """Per iteration k, the items added by rollouts 0..k, oldest first (a strategy that replaces or drops
    items, such as regeneration, shows here what each rollout added, not what it dropped)."""
    grown: list[list[dict[str, Any]]] = []
    items: list[dict[str, Any]] = []
    for k in range(iterations):
        items = items + [dict(r["knowledge_added"]) for r in rollouts if r["iteration"] == k and r["knowledge_added"]]
        grown.append(items)
    return grown


def first_right(correct: Sequence[bool]) -> int | None:
    return next((k for k, right in enumerate(correct) if right), None)


def problem_record(item: EvalItemRow, knowledge_items: int) -> dict[str, Any]:
    return {
        "position": item.position,
        "problem_id": item.problem_id,
        "thread_id": item.thread_id,
        "run_id": item.run_id,
        "status": item.status,
        "gold": item.gold,
        "final_answer": item.final_answer,
        "final_correct": bool(item.final_correct) if item.final_correct is not None else None,
        "answers": item.answers,
        "correct": item.correct,
        "iterations": len(item.answers),
        "solved_at_least_once": any(item.correct),
        "first_right_iteration": first_right(item.correct),
        "knowledge_items": knowledge_items,
        "prompt_tokens": sum(item.prompt_tokens),
        "completion_tokens": sum(item.completion_tokens),
        "error": item.error,
    }


def problem_records(store: RolloutStore, eval_id: str) -> list[dict[str, Any]]:
    """One record per problem of the evaluation, in order (problems not finished have no answers yet)."""
    rollouts = evaluation_rollouts(store, eval_id)
    added: dict[int, int] = {}
    for record in rollouts:
        if record["knowledge_added"]:
            added[record["position"]] = added.get(record["position"], 0) + 1
    return [problem_record(item, added.get(item.position, 0)) for item in EvalStore(store).eval_items(eval_id)]


def share(fraction: float | None, total: int) -> dict[str, float | None]:
    """A report's share of `total` finished problems with its 95% Wilson interval; all None (n/a) when no
    problem finished."""
    if fraction is None or total <= 0:
        return {"value": None, "low": None, "high": None}
    low, high = wilson(round(fraction * total), total)
    return {"value": fraction, "low": low, "high": high}


def iteration_records(report: EvalReport) -> list[dict[str, Any]]:
    """Per iteration of `report`: pass@1, the share solved at least once and the final-answer accuracy, each
    with its 95% Wilson interval over the problems that finished (None where none did); rollouts and tokens."""
    total = report.finished
    records = []
    for f in report.per_iteration:
        pass1, ever = share(f.accuracy, total), share(f.cumulative_solved, total)
        last = share(f.final_accuracy, total)
        records.append(
            {
                "eval_id": report.eval_id,
                "iteration": f.iteration,
                "problems": report.problems,
                "finished": total,
                "pass_at_1": pass1["value"],
                "pass_at_1_low": pass1["low"],
                "pass_at_1_high": pass1["high"],
                "solved_at_least_once": ever["value"],
                "solved_low": ever["low"],
                "solved_high": ever["high"],
                "final_accuracy": last["value"],
                "final_low": last["low"],
                "final_high": last["high"],
                "rollouts": f.rollouts,
                "failed_rollouts": f.failed_rollouts,
                "prompt_tokens": f.prompt_tokens,
                "completion_tokens": f.completion_tokens,
                "cumulative_tokens": f.cumulative_tokens,
            }
        )
    return records
