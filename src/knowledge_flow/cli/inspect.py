"""`kflow show` and `kflow threads`: what a database holds, run by run and rollout by rollout."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text

from knowledge_flow.cli.common import (
    OUTCOME,
    DbOpt,
    JsonOpt,
    UsageError,
    clean,
    database_failure,
    fail,
    json_outcome,
    open_run,
    open_store,
    out,
    resolve_db,
    table,
    write_json,
)
from knowledge_flow.cli.run import describe_item
from knowledge_flow.cli.show_figures import print_figures
from knowledge_flow.persistence.urls import shown

if TYPE_CHECKING:
    from knowledge_flow.persistence.store import RolloutStore, RunRow


def show(
    thread_id: Annotated[str, typer.Argument(help="The thread to show.")],
    db: DbOpt = None,
    as_json: JsonOpt = False,
    texts: Annotated[
        bool, typer.Option("--texts", help="Add each rollout's full prompt, output, reasoning and summary.")
    ] = False,
) -> None:
    """Show a run: per rollout the answer, whether it changed, the knowledge it added, tokens, latency.

    The database stores long texts compressed; `--texts` reads them back."""
    from knowledge_flow.evaluation.rows import EvalStore
    from knowledge_flow.persistence.seals import StoreDamaged
    from knowledge_flow.prompts.bounds import one_line

    json_outcome(as_json, thread_id=thread_id)
    try:
        db_path, store, run = open_run(db, thread_id)
    except UsageError as exc:
        raise fail(str(exc)) from None
    from knowledge_flow.figures import run_figures
    from knowledge_flow.text.answers import equivalent

    try:
        run = mirrored(db_path, store, [run])[0]
    except Exception as exc:
        if database_failure(exc) is not None:
            raise
        damage: str | None = f"thread {run.thread_id}: its checkpoint cannot be read ({one_line(exc)})"
    else:
        damage = run_damage(db_path, store, run)
    if damage is not None:
        OUTCOME.fields["run_id"] = run.run_id
        raise fail(f"{database_failure(StoreDamaged(damage), db_path)}; restore it from a copy", 1, status="damaged")
    stopped_by = stopping_error(db_path, run.thread_id) if run.status == "failed" else None

    rows = store.rollouts(run.run_id)
    item = EvalStore(store).eval_item_of_thread(thread_id)
    gold = item.gold if item is not None else None
    answer_type = run.params.get("answer_type", "integer")
    rollouts: list[dict[str, Any]] = [
        {
            "iteration": r.iteration,
            "answer": r.answer,
            **({"correct": equivalent(gold, r.answer, answer_type)} if gold is not None else {}),
            "changed": r.changed,
            "knowledge_added": json.loads(r.knowledge_added) if r.knowledge_added else None,
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
            "latency_s": round(r.latency_s, 3),
            "finish_reason": r.finish_reason,
            "thinker": r.index,
            "temperature": r.temperature,
            "confidence": r.confidence,
            "rank": r.rank,
            "error": r.error,
            **({"strategy": r.strategy} if r.strategy else {}),
            **({"measures": r.measures, "stop_reason": r.stop_reason} if r.measures or r.stop_reason else {}),
            **({"finish_order": r.finish_order} if r.finish_order is not None else {}),
            **(
                {"aggregated": [p.rsplit(":", 2)[1] + "." + p.rsplit(":", 2)[2] for p in r.parents]}
                if r.parents
                else {}
            ),
            **({"tokens_counted_from": r.usage_source} if r.usage_source not in (None, "server") else {}),
            **(
                {"messages": r.messages, "content": r.content, "reasoning": r.reasoning, "summary": r.summary}
                if texts
                else {}
            ),
        }
        for r in rows
    ]

    figures = run_figures(store, run.run_id)
    selections = [
        {
            "iteration": row.iteration,
            "rule": row.rule,
            "rollout_id": row.rollout_id,
            "answer": row.answer,
            "kept_previous": row.kept_previous,
            "votes": row.votes,
            "agreement": row.agreement,
        }
        for _, row in sorted(store.selections(run.run_id).items())
    ]
    if as_json:
        payload: dict[str, Any] = {
            "thread_id": run.thread_id,
            "run_id": run.run_id,
            "status": run.status,
            **({"error": stopped_by} if stopped_by is not None else {}),
            "final_answer": run.final_answer,
            "params": run.params,
            "problem": run.problem,
            **({"evaluation": item.eval_id, "gold": gold} if item is not None else {}),
            "rollouts": rollouts,
            "selections": selections,
            **({key: figures[key] for key in ("trt", "deepconf", "rsa", "final_select") if key in figures}),
        }
        write_json(payload)
        return
    out.print(
        Text(f"thread {clean(run.thread_id)}  run {run.run_id}  status {run.status}  model {clean(run.answered_by)}")
    )
    if stopped_by is not None:
        out.print(Text(f"stopped by an error: {clean(stopped_by, 300)} (`kflow resume` runs that step again)"))
    out.print(Text(f"problem: {clean(run.problem, 300)}"))
    if item is not None:
        out.print(Text(f"evaluation {item.eval_id}, problem {item.position}: gold answer {clean(gold)}"))
    lineage = any("aggregated" in r for r in rollouts)  # rsa: the members each rollout aggregated
    headers = ["#", *(["aggregated"] if lineage else []), "answer", *(["correct"] if gold is not None else [])]
    rollout_table = table(*headers, "changed", "knowledge added", "tokens (prompt+completion)", "latency", "finish")
    for r in rollouts:
        added = r["knowledge_added"]
        thinker = f".{r['thinker']}{'*' if r['rank'] == 0 else ''}" if run.params.get("thinkers", 1) > 1 else ""
        rollout_table.add_row(
            f"{r['iteration']}{thinker}",
            *([" ".join(r.get("aggregated", [])) or "—"] if lineage else []),
            Text(clean(r["answer"], 40)),
            *([("yes" if r["correct"] else "no")] if gold is not None else []),
            "—" if r["changed"] is None else ("yes" if r["changed"] else "no"),
            Text(clean(describe_item(added), 80) if added else "—"),
            f"{r['prompt_tokens']}+{r['completion_tokens']}",
            f"{r['latency_s']:.1f}s",
            Text(
                clean(r["finish_reason"])
                + (f" ({clean(r['stop_reason'])})" if r.get("stop_reason") else "")
                + (f": {clean(r['error'], 60)}" if r["error"] else "")
            ),
        )
    out.print(rollout_table)
    rule = run.params.get("select_rule", "confidence")
    departures = [f"iteration {entry['iteration']}: {entry['rule']}" for entry in selections if entry["rule"] != rule]
    if departures and "trt" not in figures:  # TRT's rounds table shows every round's
        out.print(Text(f"select rule {rule}, as applied where it differs: {'; '.join(departures)}"))
    print_figures(figures)
    for r in rollouts if texts else []:
        out.rule(Text(f"rollout {r['iteration']}.{r['thinker']}"))
        for message in r["messages"]:
            out.print(Text(f"[{message['role']}]", style="bold"))
            out.print(Text(clean(message["content"])))
        if r["reasoning"]:
            out.print(Text("[reasoning]", style="bold"))
            out.print(Text(clean(r["reasoning"])))
        out.print(Text("[output]", style="bold"))
        out.print(Text(clean(r["content"])))
    out.print(Text(f"final answer: {clean(run.final_answer)}", style="bold"))


def threads(
    db: DbOpt = None,
    evaluation: Annotated[str | None, typer.Option("--eval", help="Only the threads of this evaluation run.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List the runs in a database, oldest first, with their status."""
    from knowledge_flow.evaluation.rows import EvalStore

    json_outcome(as_json)
    try:
        db_path = resolve_db(db)
        store = open_store(db_path, must_exist=True)
        if evaluation is not None and EvalStore(store).get_eval(evaluation) is None:
            raise UsageError(f"no evaluation run {evaluation!r} in {shown(db_path)}")
    except UsageError as exc:
        raise fail(str(exc)) from None
    runs = mirrored(db_path, store, store.list_runs())
    if evaluation is not None:
        wanted = {item.thread_id for item in EvalStore(store).eval_items(evaluation)}
        runs = [r for r in runs if r.thread_id in wanted]
    listing: list[dict[str, Any]] = [
        {
            "thread_id": r.thread_id,
            "run_id": r.run_id,
            "status": r.status,
            "iterations_done": r.iterations_done,
            "iterations": r.params.get("iterations"),
            "final_answer": r.final_answer,
            "model": r.model,
            "strategy": r.strategy,
            "created_at": r.created_at,
        }
        for r in runs
    ]
    if as_json:
        write_json(listing)
        return
    listing_table = table("thread", "run", "status", "rollouts", "final answer", "model", "created")
    for item in listing:
        listing_table.add_row(
            Text(clean(item["thread_id"])),
            item["run_id"],
            item["status"],
            f"{item['iterations_done']}/{item['iterations']}",
            Text(clean(item["final_answer"], 30)),
            Text(clean(item["model"])),
            item["created_at"],
        )
    out.print(listing_table)


def stopping_error(db_path: str, thread_id: str) -> str | None:
    """The error that stopped the thread's run in a step (`knowledge_flow.runs.step_error`)."""
    from knowledge_flow.persistence.checkpointer import get_checkpointer
    from knowledge_flow.runs import step_error

    checkpointer = get_checkpointer(db_path)
    try:
        return step_error(checkpointer, thread_id)
    finally:
        checkpointer.close()


def run_damage(db_path: str, store: RolloutStore, run: RunRow) -> str | None:
    """What is wrong with the run's stored rows (`persistence.damage`): rollouts missing, altered or
    unreadable, or chosen answers that disagree with the run's checkpoint; None when intact."""
    from knowledge_flow.graph import compile_graph
    from knowledge_flow.persistence.checkpointer import get_checkpointer
    from knowledge_flow.persistence.damage import describe_iterations, rollout_damage
    from knowledge_flow.prompts.bounds import one_line

    damage = rollout_damage(store, [run.run_id], {run.run_id: run.iterations_done}).get(run.run_id)
    if damage:
        return f"thread {run.thread_id}, run {run.run_id}: {damage.describe()}"
    checkpointer = get_checkpointer(db_path)
    try:
        values = compile_graph(checkpointer).get_state({"configurable": {"thread_id": run.thread_id}}).values
    except Exception as exc:  # a checkpoint that cannot be decoded
        return f"thread {run.thread_id}, run {run.run_id}: its checkpoint cannot be read ({one_line(exc)})"
    finally:
        checkpointer.close()
    if values.get("run_id") != run.run_id:
        return None  # an earlier run of the thread: its checkpoint was replaced by the latest run's
    chosen = {k: row.answer for k, row in store.chosen_rows([run.run_id])[run.run_id].items()}
    answers = list(values.get("answers", []))
    differ = [k for k, answer in enumerate(answers) if k not in chosen or chosen[k] != answer]
    if differ:
        return (
            f"thread {run.thread_id}, run {run.run_id}: the stored answers of {describe_iterations(differ)} "
            "disagree with the run's checkpoint"
        )
    return None


def mirrored(db_path: str, store: RolloutStore, runs: Sequence[RunRow]) -> list[RunRow]:
    """The runs as their checkpoints hold them (`knowledge_flow.runs.from_checkpoints`)."""
    if not runs:
        return []
    from knowledge_flow.persistence.checkpointer import get_checkpointer
    from knowledge_flow.runs import from_checkpoints

    checkpointer = get_checkpointer(db_path)
    try:
        return from_checkpoints(store, checkpointer, runs)
    finally:
        checkpointer.close()
