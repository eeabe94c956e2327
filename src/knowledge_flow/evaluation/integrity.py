"""Whether an evaluation's stored rows can be trusted before figures are computed from them.

`check_evaluation` reads the evaluation's row, its problems' rows and their runs' rollouts as stored and
raises `StoreDamaged` (naming the problems and iterations) when a row is missing, altered (its seal does
not match) or unreadable, or when a finished problem's per-iteration tokens disagree with its rollouts.
A report is then not computed: a damaged store gives a clear message, never wrong numbers.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from knowledge_flow.evaluation.rows import EvalItemRow, EvalRow, EvalStore
from knowledge_flow.persistence.damage import StoreDamaged, rollout_damage
from knowledge_flow.persistence.files import database_problem
from knowledge_flow.persistence.rows import RolloutRow
from knowledge_flow.persistence.seals import check_seal, select_raw, table_of
from knowledge_flow.persistence.store import RolloutStore

STATUSES = frozenset({"pending", "running", "done", "failed"})
#: Problems named in a message; the rest are counted.
NAMED = 5


def _json_list(text: Any) -> list[Any] | None:
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return None
    return value if isinstance(value, list) else None


def check_evaluation(store: RolloutStore, eval_id: str) -> None:
    """Raise `StoreDamaged` when evaluation `eval_id`'s stored rows are missing, altered or unreadable."""
    try:
        with store.session() as session:
            connection = session.connection()
            evals = select_raw(connection, table_of(EvalRow), "eval_id = ?", [eval_id])
            items = select_raw(connection, table_of(EvalItemRow), "eval_id = ?", [eval_id])
    except (DBAPIError, sqlite3.Error) as exc:
        raise StoreDamaged(f"evaluation {eval_id}: its rows cannot be read: the file {database_problem(exc)}") from None
    problems: list[str] = []
    if not evals or not check_seal(table_of(EvalRow), evals[0]):
        raise StoreDamaged(f"evaluation {eval_id}: its own row (manifest, status) was altered")
    try:
        count = int(json.loads(evals[0]["manifest_json"])["problems"])
    except (ValueError, KeyError, TypeError):
        raise StoreDamaged(f"evaluation {eval_id}: its manifest cannot be read") from None
    positions = {item["position"] for item in items}
    missing = sorted(set(range(count)) - positions)
    if missing:
        problems.append(f"the rows of problem(s) {', '.join(map(str, missing[:NAMED]))} are missing")
    done: dict[str, int] = {}
    finished: dict[str, dict[str, Any]] = {}
    intact: set[int] = set()
    for item in sorted(items, key=lambda row: row["position"] if isinstance(row["position"], int) else -1):
        position = item["position"]
        answers = _json_list(item["answers_json"])
        if not check_seal(table_of(EvalItemRow), item) or item["status"] not in STATUSES or answers is None:
            problems.append(f"problem {position}: its row was altered")
            continue
        intact.add(position)
        if item["status"] == "done" and isinstance(item["run_id"], str):
            done[item["run_id"]] = len(answers)
            finished[item["run_id"]] = item
    # a finished problem's recorded run; an unfinished one's thread's latest (as many iterations as it records)
    runs = EvalStore(store).item_runs(EvalStore(store).eval_items(eval_id))
    owner = {run_id: position for position, run_id in runs.items() if position in intact}
    damaged = rollout_damage(store, list(owner), done)
    for run_id, damage in damaged.items():
        problems.append(f"problem {owner[run_id]} (run {run_id[:12]}): {damage.describe()}")
    problems += _token_mismatches(store, {r: i for r, i in finished.items() if r not in damaged}, owner)
    if problems:
        shown = "; ".join(problems[:NAMED]) + (f"; and {len(problems) - NAMED} more" if len(problems) > NAMED else "")
        raise StoreDamaged(f"evaluation {eval_id}: {shown}")


def _token_mismatches(store: RolloutStore, finished: dict[str, dict[str, Any]], owner: dict[str, int]) -> list[str]:
    """Finished problems whose recorded per-iteration tokens are not their rollouts' (rows written before
    seals existed are checked this way too)."""
    if not finished:
        return []
    stats = _tokens_by_iteration(store, list(finished))
    problems = []
    for run_id, item in finished.items():
        recorded = (_json_list(item["prompt_tokens_json"]), _json_list(item["completion_tokens_json"]))
        counted = stats.get(run_id, {})
        length = len(_json_list(item["answers_json"]) or [])
        stored = (
            [counted.get(k, (0, 0))[0] for k in range(length)],
            [counted.get(k, (0, 0))[1] for k in range(length)],
        )
        if recorded != stored:
            problems.append(f"problem {owner[run_id]}: its recorded tokens disagree with its stored rollouts")
    return problems


def _tokens_by_iteration(store: RolloutStore, run_ids: list[str]) -> dict[str, dict[int, tuple[int, int]]]:
    tokens: dict[str, dict[int, tuple[int, int]]] = {}
    with store.session() as session:
        for start in range(0, len(run_ids), 500):
            chunk = run_ids[start : start + 500]
            statement = select(
                RolloutRow.run_id, RolloutRow.iteration, RolloutRow.prompt_tokens, RolloutRow.completion_tokens
            ).where(RolloutRow.run_id.in_(chunk))
            for run_id, iteration, prompt, completion in session.execute(statement):
                before = tokens.setdefault(run_id, {}).get(iteration, (0, 0))
                tokens[run_id][iteration] = (before[0] + prompt, before[1] + completion)
    return tokens
