"""`kflow`: solve, resume, show, threads, demo, serve."""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, cast

import openai
import typer
from langchain_core.runnables import RunnableConfig
from rich.console import Console
from rich.table import Table
from rich.text import Text

from knowledge_flow.context import DEFAULT_DB, DEFAULT_LOCAL_BASE_URL, Context
from knowledge_flow.endpoint.replicas import check_urls
from knowledge_flow.graph import compile_graph
from knowledge_flow.params import recursion_limit, resolve_params
from knowledge_flow.persistence.checkpointer import SqliteCheckpointer, check_db_path
from knowledge_flow.persistence.store import SchemaError, Store, get_store
from knowledge_flow.server_launch.model_files import ModelError
from knowledge_flow.server_launch.process import ServerError, ServerProcess, models_ready
from knowledge_flow.state import InputState, KnowledgeItem, State
from knowledge_flow.strategies import shown_knowledge

app = typer.Typer(
    help="Knowledge Flow: solve hard problems in many rollouts that pass knowledge, not context.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
serve_app = typer.Typer(help="Start and stop model servers.", no_args_is_help=True)
app.add_typer(serve_app, name="serve")
prompts_app = typer.Typer(help="Prompt sets: list, show and export the built-in ones.", no_args_is_help=True)
app.add_typer(prompts_app, name="prompts")

err = Console(stderr=True, highlight=False)
out = Console(highlight=False, soft_wrap=True)

SAMPLE_PROBLEM = (
    "Janet’s ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for her "
    "friends every day with four. She sells the remainder at the farmers' market daily for $2 per fresh duck "
    "egg. How much in dollars does she make every day at the farmers' market?"
)

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def clean(text: str | None, limit: int | None = None) -> str:
    """Model text made safe for a terminal (no control characters or escape sequences)."""
    if text is None:
        return "—"
    cleaned = _CONTROL.sub("�", text)
    if limit is not None and len(cleaned) > limit:
        cleaned = cleaned[: limit - 1] + "…"
    return cleaned


class UsageError(Exception):
    """Bad input: reported with exit code 2."""


def fail(message: str, code: int = 2) -> typer.Exit:
    err.print(Text(f"error: {message}", style="bold red"))
    return typer.Exit(code)


def check_base_url(url: str) -> str:
    """One URL, or several separated by commas (replicas); returned normalised."""
    try:
        return ",".join(check_urls(url))
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def resolve_db(db: str | None) -> str:
    path = db or os.environ.get("KFLOW_DB") or DEFAULT_DB
    try:
        return str(check_db_path(path))
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def open_store(db: str, must_exist: bool = False) -> Store:
    if must_exist and not Path(db).is_file():
        raise UsageError(f"database {db!r} does not exist")
    try:
        return get_store(db)
    except SchemaError as exc:
        raise UsageError(str(exc)) from None


@contextmanager
def endpoint(base_url: str) -> Iterator[str]:
    """Yield the base URL to use. The embedded local server is started for the command if it is the
    target and is not running yet (and stopped afterwards)."""
    if base_url != DEFAULT_LOCAL_BASE_URL or models_ready(base_url):
        yield base_url
        return
    from knowledge_flow.server_launch.local import start_local

    err.print(f"the local model server is not running at {base_url}; starting it for this command")
    try:
        server: ServerProcess = start_local(write_pid_file=False, progress=lambda m: err.print(f"  {m}"))
    except (ServerError, ModelError) as exc:
        raise UsageError(
            f"{exc}\nStart a server with `kflow serve local`, or pass --base-url URL of an OpenAI-compatible "
            "endpoint (e.g. vLLM)."
        ) from None
    try:
        yield base_url
    finally:
        server.stop()


def _print_rollout(store: Store, state: dict[str, Any]) -> None:
    iteration = state["iteration"] - 1
    rid = store.best_rollout_id(state["run_id"], iteration)
    row = store.get_rollout(rid) if rid else None
    answer = state["answers"][-1]
    tokens = f"{row.prompt_tokens}+{row.completion_tokens} tokens" if row else ""
    latency = f"{row.latency_s:.1f}s" if row else ""
    changed = " (changed)" if row is not None and row.changed else ""
    err.print(Text(f"rollout {iteration}: answer {clean(answer)}{changed}  [{tokens}, {latency}]", style="bold"))


def describe_item(item: dict[str, Any] | KnowledgeItem) -> str:
    wrong = item.get("wrong_answer")
    return f"not {wrong}: {item['text']}" if wrong is not None else str(item["text"])


def _print_knowledge(items: list[KnowledgeItem]) -> None:
    if not items:
        err.print("  knowledge: (empty)")
        return
    err.print(f"  knowledge ({len(items)} shown):")
    for item in items:
        err.print(Text(f"   - {clean(describe_item(item), 160)}"))


def run_graph(*, graph_input: dict[str, Any] | None, thread_id: str, db: str, context: Context) -> dict[str, Any]:
    checkpointer = SqliteCheckpointer(db)
    graph = compile_graph(checkpointer)
    config: RunnableConfig = {"configurable": {"thread_id": thread_id}}
    iterations = (graph_input or {}).get("iterations")
    if graph_input is None:
        iterations = graph.get_state(config).values["params"]["iterations"]
    config["recursion_limit"] = recursion_limit(int(iterations or 1))
    store = get_store(db)
    last_knowledge: list[KnowledgeItem] | None = None
    updated: set[str] = set()
    try:
        for mode, chunk in graph.stream(
            cast(InputState | None, graph_input),
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
                err.print(f"run {values['run_id']} on thread {thread_id} (database {db})")
            if "distill_knowledge" in updated:
                _print_rollout(store, values)
                params = values["params"]
                visible = shown_knowledge(cast(State, values), store.prompt_set(params["prompt_hash"]))
                if visible != last_knowledge:
                    _print_knowledge(visible)
                    last_knowledge = visible
    finally:
        checkpointer.close()
    return summarize(graph.get_state(config).values, thread_id, db)


def summarize(values: dict[str, Any], thread_id: str, db: str) -> dict[str, Any]:
    params = values.get("params") or {}
    knowledge = shown_knowledge(cast(State, values), get_store(db).prompt_set(params["prompt_hash"])) if params else []
    return {
        "thread_id": thread_id,
        "run_id": values.get("run_id"),
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
        sys.stdout.write(json.dumps({k: v for k, v in result.items() if k != "db"}, ensure_ascii=False) + "\n")
        return
    usage = result["usage"]
    out.print(Text(f"final answer: {clean(result['final_answer'])}", style="bold green"))
    out.print(f"answers: {', '.join(clean(a) for a in result['answers'])}")
    out.print(
        f"rollouts: {result['iterations_done']}   tokens: {usage['prompt_tokens']} prompt + "
        f"{usage['completion_tokens']} completion"
    )
    out.print(f"thread: {result['thread_id']}   database: {result['db']}")


def _execute(
    graph_input: dict[str, Any] | None, thread_id: str, db: str, base_url: str, as_json: bool, conn: Connection
) -> None:
    try:
        with endpoint(base_url) as url:
            context = Context(
                base_url=url, db_path=db, max_retries=conn.max_retries, request_timeout=conn.request_timeout
            )
            result = run_graph(graph_input=graph_input, thread_id=thread_id, db=db, context=context)
    except UsageError as exc:
        raise fail(str(exc)) from None
    except (openai.APIConnectionError, openai.APIStatusError) as exc:
        raise fail(
            f"the endpoint {base_url} failed: {exc}. Completed rollouts are saved; continue with "
            f"`kflow resume {thread_id} --db {db}`",
            code=1,
        ) from None
    except KeyboardInterrupt:
        raise fail(f"interrupted; continue with `kflow resume {thread_id} --db {db}`", code=130) from None
    emit(result, as_json)
    if result["status"] == "failed":
        raise fail(failure_message(get_store(db), result, thread_id, db), code=1)


def failure_message(store: Store, result: dict[str, Any], thread_id: str, db: str) -> str:
    """Why a run failed (its rollouts' distinct errors, the latest first) and how to continue it."""
    reasons = list(dict.fromkeys(r.error for r in reversed(store.rollouts(result["run_id"])) if r.error))
    shown = "; ".join(clean(reason, 300) for reason in reasons[:3]) or "no reason recorded"
    done = result["iterations_done"]
    return (
        f"the run failed: its rollouts keep failing ({done} iterations, the last of them without a usable "
        f"response): {shown}. Fix the cause, then `kflow resume {thread_id} --db {db}` tries them again"
    )


@dataclass(frozen=True)
class Connection:
    max_retries: int = 6
    request_timeout: float = 3600.0


MaxRetriesOpt = Annotated[
    int, typer.Option("--max-retries", min=0, help="Retries on 429, 5xx, timeouts and lost connections.")
]
TimeoutOpt = Annotated[float, typer.Option("--request-timeout", min=1.0, help="Seconds to wait for one completion.")]
StrategyOpt = Annotated[
    str,
    typer.Option(help="knowledge-flow, regeneration, positive-knowledge, markovian or self-consistency."),
]
StopPolicyOpt = Annotated[
    str, typer.Option("--stop-policy", help="fixed (the whole budget) or stable:K (K same answers, no report).")
]
FinalAnswerOpt = Annotated[
    str | None,
    typer.Option("--final-answer", help="last or majority:W (W or 'all'); self-consistency defaults to majority:all."),
]
ModelFamilyOpt = Annotated[
    str | None, typer.Option("--model-family", help="gpt-oss, qwen3-thinking or instruct (default: from the name).")
]
ReasoningEffortOpt = Annotated[
    str | None, typer.Option("--reasoning-effort", help="gpt-oss: low, medium or high (default high).")
]
ThinkersOpt = Annotated[int, typer.Option(help="Parallel rollouts per iteration.")]
TopkOpt = Annotated[int | None, typer.Option("--topk-thinkers", help="Thinkers kept per iteration (default all).")]
MinTempOpt = Annotated[float | None, typer.Option("--min-temperature", help="Lowest thinker temperature.")]
MaxTempOpt = Annotated[float | None, typer.Option("--max-temperature", help="Highest thinker temperature.")]
DiversityOpt = Annotated[float, typer.Option("--diversity-weight", help="Penalty on similar kept thinkers.")]
DynamicTempOpt = Annotated[
    bool, typer.Option("--dynamic-temperature", help="Adapt the temperature spread to agreement and confidence.")
]
UncertaintyOpt = Annotated[
    float | None,
    typer.Option("--uncertainty-threshold", help="Below this mean log-probability the reference is not replaced."),
]
AvoidBudgetOpt = Annotated[
    int | None, typer.Option("--avoid-budget", help="regeneration: tokens of the Things to Avoid list.")
]
PrefillOpt = Annotated[
    str | None,
    typer.Option(help="Assistant prefill for every rollout, overriding the prompt set's (continued by the server)."),
]
PromptsOpt = Annotated[
    str | None,
    typer.Option(
        "--prompts",
        help="Prompt set: a built-in name (kflow prompts list) or a .toml file; default: the model family's.",
    ),
]
TopKOpt = Annotated[int, typer.Option("--top-k", help="Top-k sampling; -1 for none (always sent).")]
MinPOpt = Annotated[float, typer.Option("--min-p", help="Min-p sampling; 0 for none (always sent).")]
ExtraBodyOpt = Annotated[
    str | None,
    typer.Option(
        "--extra-body",
        help="JSON object of extra request fields, e.g. vLLM's structured_outputs or chat_template_kwargs.",
    ),
]
RepetitionOpt = Annotated[
    float, typer.Option("--repetition-penalty", help="Repetition penalty; 1 for none (always sent).")
]


def strategy_params(
    *,
    stop_policy: str,
    final_answer: str | None,
    model_family: str | None,
    reasoning_effort: str | None,
    thinkers: int,
    topk_thinkers: int | None,
    min_temperature: float | None,
    max_temperature: float | None,
    diversity_weight: float,
    dynamic_temperature: bool,
    uncertainty_threshold: float | None,
    avoid_budget: int | None,
    prefill: str | None,
    prompts: str | None,
    top_k: int,
    min_p: float,
    repetition_penalty: float,
    extra_body: str | None,
) -> dict[str, Any]:
    return {
        "extra_body": extra_body,
        "prompts": prompts,
        "top_k": top_k,
        "min_p": min_p,
        "repetition_penalty": repetition_penalty,
        "stop_policy": stop_policy,
        "final_answer_rule": final_answer,
        "model_family": model_family,
        "reasoning_effort": reasoning_effort,
        "thinkers": thinkers,
        "topk_thinkers": topk_thinkers,
        "min_temperature": min_temperature,
        "max_temperature": max_temperature,
        "diversity_weight": diversity_weight,
        "dynamic_temperature": dynamic_temperature,
        "uncertainty_threshold": uncertainty_threshold,
        "avoid_budget_tokens": avoid_budget,
        "prefill": prefill,
    }


BaseUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--base-url",
        help="OpenAI-compatible endpoint, or several separated by commas (replicas); env KFLOW_BASE_URL; "
        "default: the local server.",
    ),
]
DbOpt = Annotated[str | None, typer.Option("--db", help="SQLite file (env KFLOW_DB; default knowledge_flow.db).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout; progress goes to stderr.")]


@app.command()
def solve(
    problem: Annotated[str, typer.Argument(help="The problem text ('-' reads it from standard input).")],
    base_url: BaseUrlOpt = None,
    model: Annotated[str | None, typer.Option(help="Served model name (env KFLOW_MODEL).")] = None,
    iterations: Annotated[int, typer.Option(help="Rollouts to run (the original used 64).")] = 64,
    thread_id: Annotated[str | None, typer.Option("--thread-id", help="Thread id (default: a new one).")] = None,
    db: DbOpt = None,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 0.6,
    top_p: Annotated[float, typer.Option("--top-p", help="Nucleus sampling.")] = 1.0,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Tokens per rollout.")] = 512,
    answer_type: Annotated[str, typer.Option("--answer-type", help="integer, latex or text.")] = "integer",
    strategy: StrategyOpt = "knowledge-flow",
    knowledge_budget: Annotated[
        int, typer.Option("--knowledge-budget", help="Token budget of the knowledge list in a prompt.")
    ] = 8192,
    prefill: PrefillOpt = None,
    stop_policy: StopPolicyOpt = "fixed",
    final_answer: FinalAnswerOpt = None,
    model_family: ModelFamilyOpt = None,
    reasoning_effort: ReasoningEffortOpt = None,
    thinkers: ThinkersOpt = 1,
    topk_thinkers: TopkOpt = None,
    min_temperature: MinTempOpt = None,
    max_temperature: MaxTempOpt = None,
    diversity_weight: DiversityOpt = 0.0,
    dynamic_temperature: DynamicTempOpt = False,
    uncertainty_threshold: UncertaintyOpt = None,
    avoid_budget: AvoidBudgetOpt = None,
    prompts: PromptsOpt = None,
    top_k: TopKOpt = -1,
    min_p: MinPOpt = 0.0,
    repetition_penalty: RepetitionOpt = 1.0,
    extra_body: ExtraBodyOpt = None,
    as_json: JsonOpt = False,
    max_retries: MaxRetriesOpt = 6,
    request_timeout: TimeoutOpt = 3600.0,
) -> None:
    """Run Knowledge Flow on one problem."""
    run_solve(
        problem,
        base_url=base_url,
        db=db,
        thread_id=thread_id,
        as_json=as_json,
        conn=Connection(max_retries, request_timeout),
        params={
            "model": model,
            "iterations": iterations,
            "temperature": temperature,
            "top_p": top_p,
            "max_new_tokens": max_new_tokens,
            "strategy": strategy,
            "answer_type": answer_type,
            "knowledge_budget_tokens": knowledge_budget,
            **strategy_params(
                stop_policy=stop_policy,
                final_answer=final_answer,
                model_family=model_family,
                reasoning_effort=reasoning_effort,
                thinkers=thinkers,
                topk_thinkers=topk_thinkers,
                min_temperature=min_temperature,
                max_temperature=max_temperature,
                diversity_weight=diversity_weight,
                dynamic_temperature=dynamic_temperature,
                uncertainty_threshold=uncertainty_threshold,
                avoid_budget=avoid_budget,
                prefill=prefill,
                prompts=prompts,
                top_k=top_k,
                min_p=min_p,
                repetition_penalty=repetition_penalty,
                extra_body=extra_body,
            ),
        },
    )


def run_solve(
    problem: str,
    *,
    base_url: str | None,
    db: str | None,
    thread_id: str | None,
    as_json: bool,
    params: dict[str, Any],
    conn: Connection | None = None,
) -> None:
    try:
        if problem == "-":
            problem = sys.stdin.read()
        if not problem.strip():
            raise UsageError("the problem is empty")
        url = check_base_url(base_url or os.environ.get("KFLOW_BASE_URL") or DEFAULT_LOCAL_BASE_URL)
        db_path = resolve_db(db)
        resolve_params(params)
        open_store(db_path)
    except (UsageError, ValueError) as exc:
        raise fail(str(exc)) from None
    thread = thread_id or uuid.uuid4().hex[:12]
    _execute({"problem": problem, **params}, thread, db_path, url, as_json, conn or Connection())


@app.command()
def resume(
    thread_id: Annotated[str, typer.Argument(help="The thread to continue.")],
    db: DbOpt = None,
    base_url: BaseUrlOpt = None,
    as_json: JsonOpt = False,
    max_retries: MaxRetriesOpt = 6,
    request_timeout: TimeoutOpt = 3600.0,
) -> None:
    """Continue an interrupted run from its last completed step, with its stored parameters."""
    try:
        db_path = resolve_db(db)
        store = open_store(db_path, must_exist=True)
        run = store.latest_run(thread_id)
        if run is None:
            raise UsageError(f"no run on thread {thread_id!r} in {db_path}")
        url = check_base_url(base_url or os.environ.get("KFLOW_BASE_URL") or run.base_url or DEFAULT_LOCAL_BASE_URL)
    except UsageError as exc:
        raise fail(str(exc)) from None
    checkpointer = SqliteCheckpointer(db_path)
    try:
        values = compile_graph(checkpointer).get_state({"configurable": {"thread_id": thread_id}}).values
    finally:
        checkpointer.close()
    if not values:
        raise fail(f"thread {thread_id!r} has no checkpoint in {db_path}")
    if values.get("status") == "done":
        err.print(f"thread {thread_id} is already complete")
        emit(summarize(values, thread_id, db_path), as_json)
        return
    _execute(None, thread_id, db_path, url, as_json, Connection(max_retries, request_timeout))


@app.command()
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
    try:
        db_path = resolve_db(db)
        store = open_store(db_path, must_exist=True)
        run = store.latest_run(thread_id)
        if run is None:
            raise UsageError(f"no run on thread {thread_id!r} in {db_path}")
    except UsageError as exc:
        raise fail(str(exc)) from None
    rows = store.rollouts(run.run_id)
    rollouts: list[dict[str, Any]] = [
        {
            "iteration": r.iteration,
            "answer": r.answer,
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
            **(
                {"messages": r.messages, "content": r.content, "reasoning": r.reasoning, "summary": r.summary}
                if texts
                else {}
            ),
        }
        for r in rows
    ]
    if as_json:
        payload = {
            "thread_id": run.thread_id,
            "run_id": run.run_id,
            "status": run.status,
            "final_answer": run.final_answer,
            "params": run.params,
            "problem": run.problem,
            "rollouts": rollouts,
        }
        sys.stdout.write(json.dumps(payload, ensure_ascii=False) + "\n")
        return
    out.print(Text(f"thread {run.thread_id}  run {run.run_id}  status {run.status}  model {clean(run.model)}"))
    out.print(Text(f"problem: {clean(run.problem, 300)}"))
    table = Table("#", "answer", "changed", "knowledge added", "tokens (prompt+completion)", "latency", "finish")
    for r in rollouts:
        added = r["knowledge_added"]
        thinker = f".{r['thinker']}{'*' if r['rank'] == 0 else ''}" if run.params.get("thinkers", 1) > 1 else ""
        table.add_row(
            f"{r['iteration']}{thinker}",
            Text(clean(r["answer"], 40)),
            "—" if r["changed"] is None else ("yes" if r["changed"] else "no"),
            Text(clean(describe_item(added), 80) if added else "—"),
            f"{r['prompt_tokens']}+{r['completion_tokens']}",
            f"{r['latency_s']:.1f}s",
            Text(clean(r["finish_reason"]) + (f": {clean(r['error'], 60)}" if r["error"] else "")),
        )
    out.print(table)
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


@app.command()
def threads(db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """List the runs in a database with their status."""
    try:
        db_path = resolve_db(db)
        store = open_store(db_path, must_exist=True)
    except UsageError as exc:
        raise fail(str(exc)) from None
    runs = store.list_runs()
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
    table = Table("thread", "run", "status", "rollouts", "final answer", "model", "created")
    for item in listing:
        table.add_row(
            Text(clean(item["thread_id"])),
            item["run_id"][:12],
            item["status"],
            f"{item['iterations_done']}/{item['iterations']}",
            Text(clean(item["final_answer"], 30)),
            Text(clean(item["model"], 40)),
            item["created_at"],
        )
    out.print(table)


#: The model `kflow demo` starts: on the sample problems of the README's measurements the 1.5B model answers
#: most GSM8K problems and follows the output format, while the 0.5B model mostly copies the format's
#: placeholders; the 1.5B model takes about 1-2 minutes for the demo's 3 rollouts on two cores.
DEMO_MODEL = "qwen2.5-coder-1.5b"


@app.command()
def demo(
    db: Annotated[str, typer.Option("--db", help="SQLite file for the demo run.")] = "kflow-demo.db",
    iterations: Annotated[int, typer.Option(help="Rollouts.")] = 3,
    model: Annotated[
        str | None,
        typer.Option(help=f"Packaged model to start (default {DEMO_MODEL}, or the 0.5B model without its extra)."),
    ] = None,
) -> None:
    """Solve a sample GSM8K problem on the local CPU model server (3 rollouts).

    A server already running on the local port is used with the model it serves; otherwise the packaged
    1.5B model is started for the demo (the 0.5B one when the `local-1.5b` extra is not installed)."""
    from knowledge_flow.server_launch.local import served_model, start_local
    from knowledge_flow.server_launch.model_files import QWEN_05B, installed, packaged_model

    server: ServerProcess | None = None
    if models_ready(DEFAULT_LOCAL_BASE_URL):
        name = served_model(DEFAULT_LOCAL_BASE_URL)
        if name is None:
            raise fail(f"the server at {DEFAULT_LOCAL_BASE_URL} does not serve exactly one model")
        if model is not None and packaged_model(model).served_name != name:
            raise fail(f"the local server runs {name}; stop it with `kflow serve stop` to demo {model}")
        err.print(f"using the local model server already running at {DEFAULT_LOCAL_BASE_URL} ({name})")
    else:
        try:
            chosen = packaged_model(model or DEMO_MODEL)
            if model is None and not installed(chosen):
                err.print(
                    f"{chosen.name} is not installed ({chosen.install_hint}); using {QWEN_05B.name}, "
                    "which gets most such problems wrong"
                )
                chosen = QWEN_05B
            server = start_local(model=chosen.name, write_pid_file=False, progress=lambda m: err.print(f"  {m}"))
        except (ServerError, ModelError) as exc:
            raise fail(str(exc), code=1) from None
        name = server.model or chosen.served_name
    err.print(Text(f"problem: {SAMPLE_PROBLEM}"))
    try:
        run_solve(
            SAMPLE_PROBLEM,
            base_url=DEFAULT_LOCAL_BASE_URL,
            db=db,
            thread_id=None,
            as_json=False,
            params={"model": name, "iterations": iterations, "max_new_tokens": 512, "temperature": 0.6, "top_p": 1.0},
        )
    finally:
        if server is not None:
            server.stop()


@serve_app.command("vllm")
def serve_vllm(
    model: Annotated[
        str, typer.Option(help="Model id or local path; `qwen2.5-coder-0.5b` is the packaged model (converted once).")
    ],
    profile: Annotated[str, typer.Option(help="gpt-oss-120b, qwen3-235b-thinking or generic.")] = "generic",
    tensor_parallel_size: Annotated[int, typer.Option("--tensor-parallel-size", help="GPUs per model copy.")] = 1,
    data_parallel_size: Annotated[int, typer.Option("--data-parallel-size", help="Model copies on this node.")] = 1,
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    host: Annotated[str, typer.Option(help="Address to bind (127.0.0.1 unless you serve other nodes).")] = "127.0.0.1",
    max_model_len: Annotated[int | None, typer.Option("--max-model-len", help="Context length.")] = None,
    enforce_eager: Annotated[
        bool, typer.Option("--enforce-eager", help="No CUDA graphs / torch.compile (faster start).")
    ] = False,
    python: Annotated[
        str | None,
        typer.Option("--python", help="Interpreter that has vLLM (env KFLOW_VLLM_PYTHON; default: this one)."),
    ] = None,
    vllm_version: Annotated[
        str | None,
        typer.Option(
            "--vllm-version",
            help="Use the profile settings for this vLLM (0.10.2, 0.32.0); default: the installed one's.",
        ),
    ] = None,
    extra_arg: Annotated[
        list[str] | None, typer.Option("--extra-arg", help="Extra vLLM server argument(s) (repeatable).")
    ] = None,
    env: Annotated[list[str] | None, typer.Option("--env", help="Extra environment KEY=VALUE (repeatable).")] = None,
    ready_timeout: Annotated[float, typer.Option("--ready-timeout", help="Seconds to wait for readiness.")] = 1800.0,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check and print the command and environment only.")
    ] = False,
) -> None:
    """Start vLLM's OpenAI-compatible server with a profile, checked against the installed vLLM first (pid file;
    stop with `kflow serve stop`)."""
    from knowledge_flow.server_launch.local import servers_dir
    from knowledge_flow.server_launch.process import port_in_use
    from knowledge_flow.server_launch.vllm import (
        INSTALL_HINT,
        VllmSetupError,
        build_launch,
        capabilities,
        check_launch,
        default_python,
        find_vllm,
        prepare_model,
        profile_release,
        start_vllm,
    )

    def stop_with(message: str, code: int) -> typer.Exit:
        sys.stderr.write(f"error: {message}\n")  # one line, unwrapped
        return typer.Exit(code)

    interpreter = python or default_python()
    try:
        extra_env = {}
        for item in env or []:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise VllmSetupError(f"--env takes KEY=VALUE, got {item!r}")
            extra_env[key] = value
        try:
            extra_args = [a for arg in extra_arg or [] for a in shlex.split(arg)]
        except ValueError as exc:
            raise VllmSetupError(f"--extra-arg: {exc}") from None
        install = find_vllm(interpreter)
        if install is None and not dry_run:
            raise VllmSetupError(f"the interpreter {interpreter} has no vLLM; {INSTALL_HINT}")
        release = profile_release(install.version if install else None, vllm_version)
        launch = build_launch(
            profile=profile,
            model=model,
            python=interpreter,
            release=release,
            host=host,
            port=port,
            tensor_parallel_size=tensor_parallel_size,
            data_parallel_size=data_parallel_size,
            max_model_len=max_model_len,
            enforce_eager=enforce_eager,
            extra_args=extra_args,
            extra_env=extra_env,
        )
        if install is not None:
            check_launch(launch, install, capabilities(install))
    except VllmSetupError as exc:
        raise stop_with(" ".join(str(exc).split()), 2) from None
    installed = f"vLLM {install.version} at {interpreter}" if install else f"no vLLM at {interpreter}: not checked"
    settings_note = f"profile {profile} with the settings for vLLM {release} ({installed})\n"
    if dry_run:
        sys.stderr.write(settings_note)
        sys.stdout.write(launch.render() + "\n")
        return
    if port_in_use(host, port):
        raise stop_with(f"port {port} on {host} is already in use; choose another with --port", 1)
    sys.stderr.write(settings_note)
    log_path = servers_dir() / f"vllm-{port}.log"
    try:
        prepare_model(launch, progress=lambda m: err.print(Text(m)))
        err.print(Text(f"starting: {launch.render()}\nlog: {log_path}"))
        server = start_vllm(
            launch, log_path=log_path, pid_path=servers_dir() / f"vllm-{port}.json", ready_timeout_s=ready_timeout
        )
    except (ServerError, ModelError) as exc:
        raise fail(str(exc), code=1) from None
    out.print(f"vLLM server running at {server.base_url} (pid {server.pid}, log {server.log_path})")


@serve_app.command("local")
def serve_local(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8765,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="A packaged model: qwen2.5-coder-0.5b (default, the local extra) or qwen2.5-coder-1.5b "
            "(the local-1.5b extra).",
        ),
    ] = None,
    model_path: Annotated[
        Path | None, typer.Option("--model-path", help="Another GGUF file, served under its own model name.")
    ] = None,
    n_ctx: Annotated[int, typer.Option("--n-ctx", help="Context length.")] = 4096,
) -> None:
    """Start the embedded CPU model server in the background (pid file; stop with `kflow serve stop`).

    The server reports the model's own name (the packaged model's, or a GGUF file's `general.name`); runs
    against it send that name (`--model NAME`)."""
    from knowledge_flow.server_launch.local import start_local
    from knowledge_flow.server_launch.model_files import packaged_model

    if model is not None and model_path is not None:
        raise fail("give either --model (a packaged model) or --model-path (a GGUF file), not both")
    try:
        if model is not None:
            packaged_model(model)
    except ModelError as exc:
        raise fail(str(exc)) from None
    try:
        server = start_local(
            host=host, port=port, model=model, model_path=model_path, n_ctx=n_ctx, progress=lambda m: err.print(m)
        )
    except (ServerError, ModelError) as exc:
        raise fail(str(exc), code=1) from None
    out.print(
        f"local model server for {server.model} running at {server.base_url} (pid {server.pid}, log {server.log_path})"
    )


@serve_app.command("stop")
def serve_stop(
    port: Annotated[int | None, typer.Option(help="Only the server on this port.")] = None,
) -> None:
    """Stop the servers started by `kflow serve` (by their pid files)."""
    from knowledge_flow.server_launch.local import stop_servers

    stopped = stop_servers(port)
    for server in stopped:
        out.print(f"stopped {server.base_url} (pid {server.pid})")
    if not stopped:
        out.print("no server was running")


@prompts_app.command("list")
def prompts_list(as_json: JsonOpt = False) -> None:
    """The built-in prompt sets, the model families they are the default for, and what they follow."""
    from knowledge_flow.prompts import DEFAULT_SETS, builtin_names, load_prompt_set

    listing = []
    for name in builtin_names():
        loaded = load_prompt_set(name)
        families = sorted(family for family, default in DEFAULT_SETS.items() if default == name)
        listing.append(
            {
                "name": name,
                "sha256": loaded.digest,
                "default_for": families,
                "description": loaded.data.get("description", ""),
                "follows": loaded.data.get("follows", ""),
            }
        )
    if as_json:
        sys.stdout.write(json.dumps(listing, ensure_ascii=False) + "\n")
        return
    for entry in listing:
        default = f" (default for {', '.join(entry['default_for'])})" if entry["default_for"] else ""
        out.print(Text(f"{entry['name']}{default}  sha256 {entry['sha256'][:12]}", style="bold"))
        out.print(Text(f"  {entry['description']}"))
        out.print(Text(f"  follows: {entry['follows']}"))


@prompts_app.command("show")
def prompts_show(name: Annotated[str, typer.Argument(help="A built-in set or a .toml file.")]) -> None:
    """Print a prompt set's file (after checking it against every strategy it has a table for)."""
    sys.stdout.write(_checked_prompt_set(name).source)


@prompts_app.command("export")
def prompts_export(
    name: Annotated[str, typer.Argument(help="A built-in set.")],
    to: Annotated[Path, typer.Option("--to", help="The file to write (refused if it exists).")],
) -> None:
    """Write a built-in set to a file, to start a set of your own from it (`--prompts FILE`)."""
    loaded = _checked_prompt_set(name)
    if to.exists():
        raise fail(f"{to} already exists; choose another --to")
    if not to.parent.is_dir():
        raise fail(f"the folder of {to} does not exist")
    to.write_text(loaded.source, encoding="utf-8")
    out.print(f"wrote {to} ({loaded.name}, sha256 {loaded.digest[:12]}); use it with --prompts {to}")


def _checked_prompt_set(name: str) -> Any:
    from knowledge_flow.prompts import PromptSetError, load_prompt_set
    from knowledge_flow.strategies import STRATEGIES

    try:
        loaded = load_prompt_set(name)
        for strategy in STRATEGIES.values():
            if loaded.has_table(strategy.spec):
                loaded.table(strategy.spec)
    except PromptSetError as exc:
        raise fail(str(exc)) from None
    return loaded


def main() -> None:
    import knowledge_flow.cli_eval  # noqa: F401  (registers `eval` and `report`)

    app()


if __name__ == "__main__":
    main()
