"""`kflow solve`, `kflow resume` and `kflow demo`: one problem's run, from start or where it stopped."""

from __future__ import annotations

import os
import sys
import uuid
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer
from rich.text import Text

from knowledge_flow.cli.common import (
    OUTCOME,
    BaseUrlOpt,
    DbOpt,
    JsonOpt,
    MaxRetriesOpt,
    RequestSettings,
    TimeoutOpt,
    UsageError,
    check_base_url,
    clean,
    database_failure,
    endpoint,
    err,
    fail,
    json_outcome,
    open_run,
    open_store,
    out,
    resolve_db,
    run_model,
    warn_withheld,
    write_json,
)
from knowledge_flow.cli.options import with_run_options
from knowledge_flow.context import DEFAULT_LOCAL_BASE_URL
from knowledge_flow.persistence.urls import shown

if TYPE_CHECKING:
    from knowledge_flow.context import Context
    from knowledge_flow.persistence.leases import Lease
    from knowledge_flow.persistence.store import RolloutStore
    from knowledge_flow.state import KnowledgeItem, State


def _print_rollout(store: RolloutStore, state: dict[str, Any]) -> None:
    iteration = state["iteration"] - 1
    rid = store.best_rollout_id(state["run_id"], iteration)
    row = store.get_rollout(rid) if rid else None
    answer = state["answers"][-1]
    if row is None:  # trt: no rollout of the round was selected, the previous best was
        kept = " (the previous best kept)" if (state.get("selection") or {}).get("kept_previous") else ""
        err.print(Text(f"rollout {iteration}: answer {clean(answer)}{kept}", style="bold"))
        return
    tokens = f"{row.prompt_tokens}+{row.completion_tokens} tokens"
    changed = " (changed)" if row.changed else ""
    err.print(
        Text(f"rollout {iteration}: answer {clean(answer)}{changed}  [{tokens}, {row.latency_s:.1f}s]", style="bold")
    )


def describe_item(item: dict[str, Any] | KnowledgeItem) -> str:
    """An item as one line: its wrong answer and its text (a section's raw text starts after its header, with
    the colon the model wrote there: not shown)."""
    from knowledge_flow.prompts.environment import strip_leading_colon

    wrong = item.get("wrong_answer")
    text = strip_leading_colon(str(item["text"]))
    return f"not {wrong}: {text}" if wrong is not None else text


def _print_knowledge(items: list[KnowledgeItem]) -> None:
    if not items:
        err.print("  knowledge: (empty)")
        return
    err.print(f"  knowledge ({len(items)} shown):")
    for item in items:
        err.print(Text(f"   - {clean(describe_item(item), 160)}"))


def run_graph(
    *,
    graph_input: dict[str, Any] | None,
    thread_id: str,
    db: str,
    context: Context,
    iterations: int | None = None,
) -> dict[str, Any]:
    """Run a new run (`graph_input`) or continue the thread's run (None: failed iterations are tried again,
    `iterations` above its budget extends it)."""
    from knowledge_flow.graph import compile_graph
    from knowledge_flow.params import recursion_limit, resolve_params
    from knowledge_flow.persistence.checkpointer import get_checkpointer
    from knowledge_flow.persistence.store import get_store
    from knowledge_flow.runs import reopen
    from knowledge_flow.strategies import shown_knowledge

    checkpointer = get_checkpointer(db)
    graph = compile_graph(checkpointer)
    config: Any = {"configurable": {"thread_id": thread_id}}
    if graph_input is None:
        reopen(graph, config, get_store(db), iterations=iterations)
        budget = graph.get_state(config).values["params"]["iterations"]
    else:
        budget = resolve_params(graph_input)["iterations"]
    config["recursion_limit"] = recursion_limit(int(budget))
    store = get_store(db)
    last_knowledge: list[KnowledgeItem] | None = None
    updated: set[str] = set()
    try:
        for mode, chunk in graph.stream(
            graph_input,
            config,
            context=context,
            stream_mode=["updates", "values"],
            durability="sync",
        ):
            if mode == "updates":
                updated = set(chunk) if isinstance(chunk, dict) else set()
                continue
            values = cast(dict[str, Any], chunk)
            if "prepare" in updated:
                err.print(Text(f"run {values['run_id']} on thread {clean(thread_id)} (database {shown(db)})"))
            if "distill_knowledge" in updated:
                _print_rollout(store, values)
                params = values["params"]
                visible = shown_knowledge(cast("State", values), store.prompt_set(params["prompt_hash"]))
                if visible != last_knowledge:
                    _print_knowledge(visible)
                    last_knowledge = visible
    finally:
        checkpointer.close()
    return summarize(graph.get_state(config).values, thread_id, db)


def summarize(values: dict[str, Any], thread_id: str, db: str) -> dict[str, Any]:
    from knowledge_flow.persistence.store import get_store
    from knowledge_flow.strategies import shown_knowledge

    params = values.get("params") or {}
    store = get_store(db)
    knowledge = shown_knowledge(cast("State", values), store.prompt_set(params["prompt_hash"])) if params else []
    run = store.get_run(values["run_id"]) if values.get("run_id") else None
    return {
        "thread_id": thread_id,
        "run_id": values.get("run_id"),
        "model": run.answered_by if run is not None else params.get("model"),
        "status": values.get("status"),
        "final_answer": values.get("final_answer"),
        "answers": values.get("answers", []),
        "knowledge": [dict(item) for item in knowledge],
        "iterations_done": values.get("iteration", 0),
        "usage": values.get("usage", {"prompt_tokens": 0, "completion_tokens": 0}),
        "stopped_early": values.get("stopped_early", False),
        "db": db,
    }


def emit(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        write_json({k: v for k, v in result.items() if k != "db"})
        return
    usage = result["usage"]
    out.print(Text(f"final answer: {clean(result['final_answer'])}", style="bold green"))
    out.print(Text(f"answers: {', '.join(clean(a) for a in result['answers'])}"))
    out.print(
        f"rollouts: {result['iterations_done']}   tokens: {usage['prompt_tokens']} prompt + "
        f"{usage['completion_tokens']} completion"
    )
    out.print(Text(f"model: {clean(result['model'])}"))
    out.print(f"thread: {result['thread_id']}   database: {shown(result['db'])}")


def _execute(
    graph_input: dict[str, Any] | None,
    thread_id: str,
    db: str,
    base_url: str,
    as_json: bool,
    conn: RequestSettings,
    *,
    model: str | None,
    iterations: int | None = None,
    lease_key: str | None = None,
    problem: tuple[str, int] | None = None,
) -> None:
    """Run or continue one thread, holding its lease (`lease_key`: another key, e.g. its evaluation's); the
    thread of an evaluation's `problem` (eval id, position) is claimed too, so no worker runs it meanwhile."""
    from knowledge_flow.context import Context
    from knowledge_flow.endpoint.client import EndpointError, describe
    from knowledge_flow.endpoint.urls import shown_url
    from knowledge_flow.interrupts import StopRequest
    from knowledge_flow.persistence.leases import LeaseHeld, acquire
    from knowledge_flow.persistence.store import get_store
    from knowledge_flow.runs import mark_failed

    resume_hint = f"`kflow resume {thread_id} --db {shown(db)}`"
    OUTCOME.fields["thread_id"] = thread_id
    store = get_store(db)
    try:
        lease = acquire(store, lease_key or f"thread:{thread_id}")
    except LeaseHeld as exc:
        raise fail(str(exc)) from None
    worker = claim_problem(store, lease, thread_id, problem) if problem is not None else None
    try:
        with StopRequest(raise_in_main=True) as stop, endpoint(base_url, model) as url:
            context = Context(
                base_url=url, db_path=db, max_retries=conn.max_retries, request_timeout=conn.request_timeout
            )
            result = run_graph(
                graph_input=graph_input, thread_id=thread_id, db=db, context=context, iterations=iterations
            )
    except UsageError as exc:
        raise fail(str(exc)) from None
    except ValueError as exc:
        mark_failed(store, thread_id)
        raise fail(str(exc)) from None
    except EndpointError as exc:
        mark_failed(store, thread_id)
        raise fail(
            f"the endpoint {shown_url(base_url)} failed: {exc}. Completed rollouts are saved; continue with "
            f"{resume_hint}",
            code=1,
        ) from None
    except KeyboardInterrupt:
        name = stop.signal_name or "interrupted"
        raise fail(f"{name}: stopped; completed rollouts are saved; continue with {resume_hint}", code=130) from None
    except Exception as exc:  # a step failed on its own: the run is failed, its checkpoint kept for resume
        failure = database_failure(exc, db)
        if failure is not None:
            raise fail(f"{failure}. {after_database_failure(store, thread_id, resume_hint)}", code=1) from None
        mark_failed(store, thread_id)
        reason = describe(exc, Context(base_url=base_url, db_path=db).secrets)
        raise fail(
            f"the run stopped: {reason}. Completed rollouts are saved; continue with {resume_hint}", code=1
        ) from None
    finally:
        if worker is not None:
            worker.release()
        lease.release()
    if result["status"] == "failed":
        message = failure_message(store, result, thread_id, db)
        emit({**result, "reason": message}, as_json)
        raise fail(message, code=1)
    emit(result, as_json)


def after_database_failure(store: RolloutStore, thread_id: str, resume_hint: str) -> str:
    """What to do after the database failed mid-run: resume when the run was stored, else start again."""
    try:
        stored = store.latest_run(thread_id) is not None
    except Exception:  # the file cannot even be read
        stored = False
    if stored:
        return f"Completed rollouts are saved; once it is fixed, continue with {resume_hint}"
    return "Nothing of the run was stored; once it is fixed, start it again"


def claim_problem(store: RolloutStore, lease: Lease, thread_id: str, problem: tuple[str, int]) -> Lease:
    """Claim an evaluation's problem for this process (as a worker of the evaluation); fail (releasing
    `lease`) when a live worker of the evaluation runs it."""
    from knowledge_flow.evaluation.claims import claim_position, join

    worker = join(store, problem[0])
    held = claim_position(store, problem[0], problem[1], worker)
    if held is None:
        return worker
    worker.release()
    lease.release()
    raise fail(
        f"thread {thread_id} belongs to evaluation run {problem[0]}, being run by worker pid {held.pid} on "
        f"{held.host} since {held.taken_at}"
    )


def failure_message(store: RolloutStore, result: dict[str, Any], thread_id: str, db: str) -> str:
    """Why a run failed (its rollouts' distinct errors, the latest first) and how to continue it."""
    reasons = list(dict.fromkeys(r.error for r in reversed(store.rollouts(result["run_id"])) if r.error))
    reasons_shown = "; ".join(clean(reason, 300) for reason in reasons[:3]) or "no reason recorded"
    done = result["iterations_done"]
    return (
        f"the run failed: its rollouts keep failing ({done} iterations, the last of them without a usable "
        f"response): {reasons_shown}. Fix the cause, then `kflow resume {thread_id} --db {shown(db)}` tries them again"
    )


@with_run_options
def solve(
    problem: Annotated[str, typer.Argument(help="The problem text ('-' reads it from standard input).")],
    base_url: BaseUrlOpt = None,
    thread_id: Annotated[str | None, typer.Option("--thread-id", help="Thread id (default: a new one).")] = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
    max_retries: MaxRetriesOpt = 6,
    request_timeout: TimeoutOpt = 3600.0,
    *,
    options: dict[str, Any],
) -> None:
    """Run Knowledge Flow on one problem."""
    json_outcome(as_json)
    run_solve(
        problem,
        base_url=base_url,
        db=db,
        thread_id=thread_id,
        as_json=as_json,
        conn=RequestSettings(max_retries, request_timeout),
        params=options,
    )


def run_solve(
    problem: str,
    *,
    base_url: str | list[str] | None,
    db: str | None,
    thread_id: str | None,
    as_json: bool,
    params: dict[str, Any],
    conn: RequestSettings | None = None,
) -> None:
    from knowledge_flow.params import resolve_params
    from knowledge_flow.user_files import MAX_PROBLEM_BYTES, check_problem, decode_utf8, read_limited

    try:
        if problem == "-":
            data = read_limited(sys.stdin.buffer, MAX_PROBLEM_BYTES, "the problem on standard input")
            problem = decode_utf8(data, "the problem read from standard input")
        check_problem(problem)
        if not problem.strip():
            raise UsageError("the problem is empty")
        url = check_base_url(base_url or os.environ.get("KFLOW_BASE_URL") or DEFAULT_LOCAL_BASE_URL)
        db_path = resolve_db(db)
        params = {**params, "model": run_model(url, params.get("model"))}
        resolve_params({**params, "problem": problem})
        open_store(db_path, writable=True)
    except (UsageError, ValueError) as exc:
        raise fail(str(exc)) from None
    thread = thread_id or uuid.uuid4().hex[:12]
    _execute(
        {"problem": problem, **params}, thread, db_path, url, as_json, conn or RequestSettings(), model=params["model"]
    )


def resume(
    thread_id: Annotated[str, typer.Argument(help="The thread to continue.")],
    db: DbOpt = None,
    base_url: BaseUrlOpt = None,
    iterations: Annotated[
        int | None,
        typer.Option(help="A larger iteration budget: extend the run (stored rollouts are kept, never re-sent)."),
    ] = None,
    as_json: JsonOpt = False,
    max_retries: MaxRetriesOpt = 6,
    request_timeout: TimeoutOpt = 3600.0,
) -> None:
    """Continue a run from its last completed step, with its stored parameters: after a crash, a Ctrl-C, an
    endpoint failure (its failed iterations are tried again), or with a larger budget (--iterations)."""
    from knowledge_flow.evaluation.rows import EvalStore
    from knowledge_flow.graph import compile_graph
    from knowledge_flow.persistence.checkpointer import get_checkpointer
    from knowledge_flow.persistence.leases import holder
    from knowledge_flow.prompts.bounds import one_line

    json_outcome(as_json, thread_id=thread_id)
    try:
        db_path, store, run = open_run(db, thread_id, writable=True)
        url = check_base_url(base_url or os.environ.get("KFLOW_BASE_URL") or run.base_url or DEFAULT_LOCAL_BASE_URL)
        warn_withheld(url)
        if iterations is not None and iterations < run.iterations_done:
            raise UsageError(
                f"the run has done {run.iterations_done} iterations; --iterations {iterations} cannot shrink it"
            )
        item = EvalStore(store).eval_item_of_thread(thread_id)
        # A thread of an evaluation is claimed like a worker claims it; on SQLite its evaluation's lease is
        # held too (one process per evaluation there).
        lease_key = f"evaluation run:{item.eval_id}" if item is not None and store.dialect == "sqlite" else None
        if lease_key is not None and item is not None and (held := holder(store, lease_key)) is not None:
            raise UsageError(
                f"thread {thread_id} belongs to evaluation run {item.eval_id}, being continued by pid {held.pid} "
                f"on {held.host} since {held.taken_at}"
            )
    except UsageError as exc:
        raise fail(str(exc)) from None
    checkpointer = get_checkpointer(db_path)
    try:
        snapshot = compile_graph(checkpointer).get_state({"configurable": {"thread_id": thread_id}})
    except Exception as exc:
        problem = database_failure(exc, db_path) or (
            f"database {shown(db_path)!r} is damaged: the checkpoint of thread {thread_id!r} cannot be read "
            f"({one_line(exc)}); restore it from a copy"
        )
        raise fail(problem, code=1) from None
    finally:
        checkpointer.close()
    values = snapshot.values
    if not values:
        raise fail(f"thread {thread_id!r} has no checkpoint in {shown(db_path)}")
    extend = iterations is not None and iterations > int(values["params"]["iterations"])
    if values.get("status") == "done" and not snapshot.next and not extend:  # a final-answer call may be pending
        err.print(Text(f"thread {clean(thread_id)} is already complete"))
        emit(summarize(values, thread_id, db_path), as_json)
        return
    _execute(
        None,
        thread_id,
        db_path,
        url,
        as_json,
        RequestSettings(max_retries, request_timeout),
        model=run.model,
        iterations=iterations,
        lease_key=lease_key,
        problem=(item.eval_id, item.position) if item is not None else None,
    )
