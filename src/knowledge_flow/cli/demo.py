"""`kflow demo` (what `make demo` runs): a few GSM8K problems solved on the packaged CPU model, printed rollout
by rollout so that the method can be seen: each rollout's answer against the gold answer, the reference it was
shown, the knowledge items as they are added, and each problem's final answer against self-consistency's over
the same rollouts. It is an evaluation run (`kflow show`, `kflow report --html` read it like any other)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text

from knowledge_flow.cli.common import UsageError, check_base_url, clean, err, fail, open_store, out, resolve_db
from knowledge_flow.context import DEFAULT_LOCAL_PORT

if TYPE_CHECKING:
    from knowledge_flow.persistence.store import RolloutStore

#: The demo's settings; the problems were chosen with exactly these. The seed makes a run repeatable on the same
#: machine (llama.cpp samples the same tokens for the same seed, prompt and thread count). The prompt set is the
#: method as published (kf-instruct-paper: every changed answer with an error report adds an item, the final
#: answer is the last rollout's): kf-instruct, the default for instruct models, adds a guard that lists an answer
#: as wrong only once the rollouts outvote it, and on a few rollouts its list stays empty.
DEMO_ITERATIONS = 4
DEMO_SEED = 1
DEMO_SETTINGS: dict[str, Any] = {
    "prompts": "kf-instruct-paper",
    "max_new_tokens": 512,
    "temperature": 0.6,
    "top_p": 1.0,
    "seed": DEMO_SEED,
}


def demo(
    db: Annotated[str, typer.Option("--db", help="SQLite file for the demo's evaluation run.")] = "kflow-demo.db",
    out_dir: Annotated[
        str, typer.Option("--out", help="Folder for the demo's problems, prediction files and HTML report.")
    ] = "kflow-demo",
    model: Annotated[
        str | None,
        typer.Option(
            help="Packaged model to start (default: qwen2.5-coder-1.5b when installed), or with --base-url "
            "the served model."
        ),
    ] = None,
    iterations: Annotated[int, typer.Option(min=1, max=64, help="Rollouts per problem.")] = DEMO_ITERATIONS,
    problems: Annotated[int | None, typer.Option(min=1, help="Only the first N of the demo's problems.")] = None,
    base_url: Annotated[
        str | None, typer.Option("--base-url", help="Use this OpenAI-compatible endpoint instead of a local server.")
    ] = None,
    port: Annotated[int, typer.Option(help="Port of the local model server.")] = DEFAULT_LOCAL_PORT,
) -> None:
    """Solve a few GSM8K problems on the local CPU model and show how knowledge flows between rollouts.

    A server already running on the local port is used with the model it serves; otherwise the packaged 1.5B
    model is started for the demo (the 0.5B one when the `local-1.5b` extra is not installed)."""
    from knowledge_flow.cli.demo_server import demo_server
    from knowledge_flow.demo_problems import load_demo_problems
    from knowledge_flow.server_launch.model_files import ModelError, packaged_model

    try:
        db_path = resolve_db(db)
        folder = Path(out_dir).expanduser()
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"{folder} is a file, not a folder; choose another --out")
        url = check_base_url(base_url) if base_url is not None else None
        if url is not None and "," in url:
            raise UsageError("the demo takes one --base-url")
        if url is None and model is not None:
            packaged_model(model)
        store = open_store(db_path)
    except (UsageError, ModelError) as exc:
        raise fail(str(exc)) from None
    loaded = load_demo_problems()
    rows = loaded.rows[:problems] if problems else loaded.rows
    started = time.monotonic()
    with demo_server(url, model, port) as (live_url, name):
        err.print(
            Text(f"Knowledge Flow demo: {len(rows)} GSM8K problems x {iterations} rollouts on {name}", style="bold")
        )
        err.print(
            "Each rollout is a fresh prompt: the problem, the summary of an earlier rollout as its reference, and "
            "the knowledge list (answers shown wrong, with the reason). Nothing else carries over."
        )
        err.print(Text(f"problems: {loaded.source}", style="dim"))
        eval_id = run_demo(store, db_path, folder, rows, live_url, name, iterations)
    report_page = write_report(store, eval_id, folder)
    summarize(store, eval_id, db_path, report_page, time.monotonic() - started)


def run_demo(
    store: RolloutStore, db_path: str, folder: Path, rows: list[dict[str, Any]], url: str, model: str, iterations: int
) -> str:
    """Create the demo's evaluation run and run it, printing as it goes; returns its id."""
    from knowledge_flow.cli.demo_watch import DemoWatch
    from knowledge_flow.context import Context
    from knowledge_flow.evaluation.datasets import DatasetError
    from knowledge_flow.evaluation.rows import EvalStore
    from knowledge_flow.evaluation.session import DatasetSpec, create_eval, execute
    from knowledge_flow.graph import compile_graph
    from knowledge_flow.interrupts import StopRequest, exit_now
    from knowledge_flow.params import resolve_params
    from knowledge_flow.persistence.checkpointer import SqliteCheckpointer

    folder.mkdir(parents=True, exist_ok=True)
    problems = folder / "problems.jsonl"
    problems.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    try:
        spec = DatasetSpec(str(problems.resolve()))
        dataset = spec.load()
        params = dict(resolve_params({"model": model, "iterations": iterations, **DEMO_SETTINGS}))
    except (DatasetError, ValueError) as exc:
        raise fail(str(exc)) from None
    eval_id = f"demo-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    create_eval(
        store,
        eval_id=eval_id,
        spec=spec,
        dataset=dataset,
        params=params,
        base_url=url,
        concurrency=1,
        output_postfix="demo",
        output_dir=str((folder / "results").resolve()),
    )
    err.print(
        Text(
            f"settings: prompt set {params['prompt_set']} (final answer {params['final_answer_rule']}), "
            f"temperature {params['temperature']}, seed {params['seed']}, at most {params['max_new_tokens']} "
            f"new tokens per rollout; evaluation run {eval_id} in {db_path}",
            style="dim",
        )
    )
    checkpointer = SqliteCheckpointer(db_path)
    graph = compile_graph(checkpointer)
    watch = DemoWatch(graph, store, list(EvalStore(store).eval_items(eval_id)), iterations)
    with StopRequest() as stop:
        try:
            execute(
                graph=graph,
                store=store,
                eval_id=eval_id,
                context=Context(base_url=url, db_path=db_path),
                concurrency=1,
                stop=stop.event,
                on_tick=watch.tick,
            )
        finally:
            watch.tick(force=True)
            watch.close()
        if stop.requested:
            err.print(
                Text(
                    f"{stop.signal_name}: stopped; the rollouts so far are kept: continue with "
                    f"`kflow eval --resume {eval_id} --db {db_path}`",
                    style="bold yellow",
                )
            )
            checkpointer.close()
            exit_now()
    checkpointer.close()
    watch.print_totals()
    return eval_id


def write_report(store: RolloutStore, eval_id: str, folder: Path) -> Path:
    from knowledge_flow.evaluation.html import write_evaluation_report
    from knowledge_flow.evaluation.report import build_report

    return write_evaluation_report(store, [build_report(store, eval_id)], [], folder / "report")


def summarize(store: RolloutStore, eval_id: str, db_path: str, page: Path, elapsed: float) -> None:
    from knowledge_flow.evaluation.rows import EvalStore

    items = list(EvalStore(store).eval_items(eval_id))
    out.print(Text(f"demo finished in {elapsed / 60:.1f} min (evaluation run {eval_id})", style="bold"))
    out.print("inspect it:")
    for item in items:
        out.print(Text(f"  kflow show {item.thread_id} --db {db_path}    # problem {item.position + 1}: every rollout"))
    out.print(Text(f"  kflow show {items[0].thread_id} --db {db_path} --texts    # with the prompts and outputs"))
    out.print(Text(f"  kflow report {eval_id} --db {db_path} --html {page.parent}    # (re)write the HTML report"))
    out.print(Text(f"HTML report: {page.resolve()}  (open it in a browser: file://{clean(str(page.resolve()))})"))
