"""`kflow show` and `kflow threads`: what a database holds, run by run and rollout by rollout."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text

from knowledge_flow.cli.common import (
    DbOpt,
    JsonOpt,
    UsageError,
    clean,
    fail,
    open_run,
    open_store,
    out,
    resolve_db,
    table,
)
from knowledge_flow.cli.run import describe_item

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

    try:
        db_path, store, run = open_run(db, thread_id)
    except UsageError as exc:
        raise fail(str(exc)) from None
    from knowledge_flow.text.answers import equivalent

    run = mirrored(db_path, store, [run])[0]

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
            **(
                {"messages": r.messages, "content": r.content, "reasoning": r.reasoning, "summary": r.summary}
                if texts
                else {}
            ),
        }
        for r in rows
    ]
    from knowledge_flow.figures import run_figures

    figures = run_figures(store, run.run_id)
    if as_json:
        payload: dict[str, Any] = {
            "thread_id": run.thread_id,
            "run_id": run.run_id,
            "status": run.status,
            "final_answer": run.final_answer,
            "params": run.params,
            "problem": run.problem,
            **({"evaluation": item.eval_id, "gold": gold} if item is not None else {}),
            "rollouts": rollouts,
            **({key: figures[key] for key in ("trt", "deepconf") if key in figures}),
        }
        sys.stdout.write(json.dumps(payload, ensure_ascii=False) + "\n")
        return
    out.print(Text(f"thread {run.thread_id}  run {run.run_id}  status {run.status}  model {clean(run.answered_by)}"))
    out.print(Text(f"problem: {clean(run.problem, 300)}"))
    if item is not None:
        out.print(Text(f"evaluation {item.eval_id}, problem {item.position}: gold answer {clean(gold)}"))
    headers = ["#", "answer", *(["correct"] if gold is not None else []), "changed", "knowledge added"]
    rollout_table = table(*headers, "tokens (prompt+completion)", "latency", "finish")
    for r in rollouts:
        added = r["knowledge_added"]
        thinker = f".{r['thinker']}{'*' if r['rank'] == 0 else ''}" if run.params.get("thinkers", 1) > 1 else ""
        rollout_table.add_row(
            f"{r['iteration']}{thinker}",
            Text(clean(r["answer"], 40)),
            *([("yes" if r["correct"] else "no")] if gold is not None else []),
            "—" if r["changed"] is None else ("yes" if r["changed"] else "no"),
            Text(clean(describe_item(added), 80) if added else "—"),
            f"{r['prompt_tokens']}+{r['completion_tokens']}",
            f"{r['latency_s']:.1f}s",
            Text(clean(r["finish_reason"]) + (f": {clean(r['error'], 60)}" if r["error"] else "")),
        )
    out.print(rollout_table)
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

    try:
        db_path = resolve_db(db)
        store = open_store(db_path, must_exist=True)
        if evaluation is not None and EvalStore(store).get_eval(evaluation) is None:
            raise UsageError(f"no evaluation run {evaluation!r} in {db_path}")
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
        sys.stdout.write(json.dumps(listing, ensure_ascii=False) + "\n")
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


def print_figures(figures: dict[str, Any]) -> None:
    """TRT's rounds (strategies, selected answer, agreement, reflection) and DeepConf's stops, when the run has
    them."""
    trt = figures.get("trt")
    if trt is not None:
        rounds = table("round", "thinker strategies -> answers", "selected", "agreement", "reflection after")
        for entry in trt["rounds"]:
            tried = "; ".join(
                f"{clean(t['key_technique'] or 'own approach', 40)} -> {clean(t['answer'], 20)}"
                for t in entry["thinkers"]
            )
            reflection = entry["reflection_after"]
            rounds.add_row(
                str(entry["round"]),
                Text(tried),
                Text(clean(entry["selected_answer"], 30)),
                f"{100 * entry['agreement']:.0f}%",
                Text(clean(describe_call(reflection), 90)),
            )
        out.print(rounds)
    deepconf = figures.get("deepconf")
    if deepconf is not None:
        tokens = deepconf["tokens"]
        threshold = deepconf["threshold"]
        out.print(
            Text(
                f"DeepConf: threshold {'—' if threshold is None else f'{threshold:.4f}'} "
                f"(window {deepconf['window']}, keep {deepconf['keep_percent']}%), {deepconf['traces']} traces, "
                f"{deepconf['stopped']} stopped ({tokens['paid_by_stopped']:,} tokens paid), "
                f"{deepconf['below_threshold']} below the threshold, {deepconf['counted']} voted; saved about "
                f"{tokens['saved_by_stops_estimate']:,} tokens by stops and {tokens['saved_by_consensus_estimate']:,} "
                f"by early consensus; vote share of the leader {100 * deepconf['vote']['leader_share']:.0f}%"
            )
        )


def describe_call(call: dict[str, Any] | None) -> str:
    if call is None:
        return "—"
    if call.get("error"):
        return f"failed: {call['error']}"
    outcome = call.get("outcome") or {}
    parts = []
    if outcome.get("strategies"):
        parts.append("next: " + ", ".join(str(s.get("key_technique")) for s in outcome["strategies"]))
    if outcome.get("added"):
        parts.append(f"added {str(outcome['added']).splitlines()[0]}")
    if outcome.get("disabled"):
        parts.append(f"disabled item {outcome['disabled']}")
    if outcome.get("note"):
        parts.append(str(outcome["note"]))
    return "; ".join(parts) or "no change"


def mirrored(db_path: str, store: RolloutStore, runs: Sequence[RunRow]) -> list[RunRow]:
    """The runs as their checkpoints hold them (`knowledge_flow.runs.from_checkpoints`)."""
    if not runs:
        return []
    from knowledge_flow.persistence.checkpointer import SqliteCheckpointer
    from knowledge_flow.runs import from_checkpoints

    checkpointer = SqliteCheckpointer(db_path)
    try:
        return from_checkpoints(store, checkpointer, runs)
    finally:
        checkpointer.close()
