"""`kflow eval` and `kflow report`: whole benchmarks, resumable, with paper-compatible results."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from knowledge_flow.answer_rules import ANSWER_RULES, check_rule
from knowledge_flow.cli import (
    AvoidBudgetOpt,
    BaseUrlOpt,
    DbOpt,
    DiversityOpt,
    DynamicTempOpt,
    ExtraBodyOpt,
    FinalAnswerOpt,
    JsonOpt,
    MaxRetriesOpt,
    MaxTempOpt,
    MinPOpt,
    MinTempOpt,
    ModelFamilyOpt,
    PrefillOpt,
    PromptsOpt,
    ReasoningEffortOpt,
    RepetitionOpt,
    StopPolicyOpt,
    StrategyOpt,
    ThinkersOpt,
    TimeoutOpt,
    TopKOpt,
    TopkOpt,
    UncertaintyOpt,
    UsageError,
    app,
    check_base_url,
    clean,
    endpoint,
    err,
    fail,
    open_store,
    out,
    resolve_db,
    strategy_params,
)
from knowledge_flow.context import DEFAULT_LOCAL_BASE_URL, Context
from knowledge_flow.evaluation.datasets import DatasetError
from knowledge_flow.evaluation.report import EvalReport, build_report, plot_reports
from knowledge_flow.evaluation.runner import Progress as Counters
from knowledge_flow.evaluation.session import DatasetSpec, create_eval, execute, new_eval_id
from knowledge_flow.graph import compile_graph
from knowledge_flow.params import resolve_params
from knowledge_flow.persistence.checkpointer import SqliteCheckpointer
from knowledge_flow.persistence.store import Store


class _Display:
    """A rich progress bar fed from the runner's counters."""

    def __init__(self) -> None:
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("rollouts {task.completed:.0f}/{task.total:.0f}"),
            TextColumn("problems {task.fields[problems]}"),
            TextColumn("tokens {task.fields[tokens]}"),
            TextColumn("acc {task.fields[acc]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err,
            refresh_per_second=4,
        )
        self.counters: Counters | None = None
        self.task: TaskID | None = None

    def start(self, counters: Counters) -> None:
        self.counters = counters
        self.task = self.bar.add_task("eval", total=counters.rollouts_total, problems="", tokens="0", acc="—")
        self.bar.start()
        self.tick()

    def tick(self) -> None:
        if self.counters is None or self.task is None:
            return
        c = self.counters
        acc = f"{100 * c.accuracy:.1f}%" if c.accuracy is not None else "—"
        failed = f" ({c.failed} failed)" if c.failed else ""
        self.bar.update(
            self.task,
            completed=c.rollouts_done,
            problems=f"{c.problems_done}/{c.problems}{failed}",
            tokens=f"{c.tokens:,}",
            acc=acc,
        )

    def stop(self) -> None:
        self.tick()
        self.bar.stop()


@app.command("eval")
def evaluate(
    dataset: Annotated[
        str | None,
        typer.Option(
            help="aime25, aime24, gsm8k, math500, hf:ORG/NAME[:config][:split], or a .jsonl/.json/.parquet file."
        ),
    ] = None,
    iterations: Annotated[int, typer.Option(help="Rollouts per problem.")] = 64,
    concurrency: Annotated[int, typer.Option(help="Problems in flight at once.")] = 256,
    model: Annotated[str | None, typer.Option(help="Served model name (env KFLOW_MODEL).")] = None,
    base_url: BaseUrlOpt = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Tokens per rollout.")] = 512,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 0.6,
    top_p: Annotated[float, typer.Option("--top-p", help="Nucleus sampling.")] = 1.0,
    strategy: StrategyOpt = "knowledge-flow",
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
    prefill: PrefillOpt = None,
    prompts: PromptsOpt = None,
    top_k: TopKOpt = -1,
    min_p: MinPOpt = 0.0,
    repetition_penalty: RepetitionOpt = 1.0,
    extra_body: ExtraBodyOpt = None,
    answer_type: Annotated[
        str | None, typer.Option("--answer-type", help="integer, latex or text (default: from the dataset).")
    ] = None,
    knowledge_budget: Annotated[int, typer.Option("--knowledge-budget", help="Tokens of the knowledge list.")] = 8192,
    output_postfix: Annotated[
        str | None, typer.Option("--output-postfix", help="Results folder suffix (default: the strategy).")
    ] = None,
    output_dir: Annotated[str, typer.Option("--output-dir", help="Where results/ files go.")] = "results",
    db: DbOpt = None,
    limit: Annotated[int | None, typer.Option(help="Only the first K problems.")] = None,
    run_id: Annotated[str | None, typer.Option("--run-id", help="Name of this evaluation run.")] = None,
    resume: Annotated[str | None, typer.Option("--resume", help="Continue the evaluation run RUN_ID.")] = None,
    problem_field: Annotated[str | None, typer.Option("--problem-field", help="Problem column.")] = None,
    answer_field: Annotated[str | None, typer.Option("--answer-field", help="Gold answer column.")] = None,
    id_field: Annotated[str | None, typer.Option("--id-field", help="Id column.")] = None,
    max_retries: MaxRetriesOpt = 6,
    request_timeout: TimeoutOpt = 3600.0,
    as_json: JsonOpt = False,
) -> None:
    """Evaluate a whole benchmark: one thread per problem, all in flight, resumable."""
    try:
        if concurrency < 1:
            raise UsageError("--concurrency must be at least 1")
        db_path = resolve_db(db)
        if resume is not None:
            store = open_store(db_path, must_exist=True)
            row = store.get_eval(resume)
            if row is None:
                raise UsageError(f"no evaluation run {resume!r} in {db_path}")
            manifest = row.manifest
            loaded = DatasetSpec(**manifest["dataset_spec"]).load()
            if loaded.content_hash != row.dataset_hash:
                raise UsageError(f"the dataset {manifest['dataset']!r} changed since run {resume!r} started")
            eval_id = resume
            url = check_base_url(base_url or os.environ.get("KFLOW_BASE_URL") or manifest["endpoint"])
        else:
            if dataset is None:
                raise UsageError("--dataset is required (or --resume RUN_ID)")
            url = check_base_url(base_url or os.environ.get("KFLOW_BASE_URL") or DEFAULT_LOCAL_BASE_URL)
            source = dataset
            if Path(dataset).expanduser().suffix.lower() in (".jsonl", ".json", ".parquet"):
                source = str(Path(dataset).expanduser().resolve())
            spec = DatasetSpec(source, problem_field, answer_field, id_field, answer_type, limit)  # type: ignore[arg-type]
            if answer_type is not None and answer_type not in ("integer", "latex", "text"):
                raise UsageError(f"answer_type must be one of integer, latex, text, got {answer_type!r}")
            loaded = spec.load()
            params = dict(
                resolve_params(
                    {
                        "model": model,
                        "iterations": iterations,
                        "temperature": temperature,
                        "top_p": top_p,
                        "max_new_tokens": max_new_tokens,
                        "strategy": strategy,
                        "answer_type": loaded.answer_type,
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
                    }
                )
            )
            eval_id = run_id or new_eval_id()
            store = open_store(db_path)
            if store.get_eval(eval_id) is not None:
                raise UsageError(f"evaluation run {eval_id!r} already exists; continue it with --resume {eval_id}")
            create_eval(
                store,
                eval_id=eval_id,
                spec=spec,
                dataset=loaded,
                params=params,
                base_url=url,
                concurrency=concurrency,
                output_postfix=output_postfix or str(params["strategy"]),
                output_dir=str(Path(output_dir).expanduser().resolve()),
            )
    except (UsageError, ValueError, DatasetError) as exc:
        raise fail(str(exc)) from None

    err.print(f"evaluation {eval_id}: {loaded.name}, {len(loaded.problems)} problems (database {db_path})")
    display = _Display()
    checkpointer = SqliteCheckpointer(db_path)
    started = time.monotonic()
    try:
        with endpoint(url) as live_url:
            context = Context(
                base_url=live_url, db_path=db_path, max_retries=max_retries, request_timeout=request_timeout
            )
            row, results, written = execute(
                graph=compile_graph(checkpointer),
                store=store,
                eval_id=eval_id,
                context=context,
                concurrency=concurrency,
                on_start=display.start,
                on_tick=display.tick,
            )
    except UsageError as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        raise fail(f"interrupted; continue with `kflow eval --resume {eval_id} --db {db_path}`", code=130) from None
    finally:
        display.stop()
        checkpointer.close()
    report = build_report(store, eval_id)
    failures = [r for r in results if r.error]
    if as_json:
        sys.stdout.write(json.dumps({**report.to_json(), "predictions": [str(p) for p in written]}) + "\n")
    else:
        print_report(report)
        if written:
            out.print(f"predictions: {written[0].parent} ({len(written)} files)")
        out.print(f"elapsed {time.monotonic() - started:.1f}s")
    if failures:
        for failure in failures[:5]:
            err.print(Text(f"problem {failure.position} failed: {clean(failure.error, 300)}", style="red"))
        raise fail(
            f"{len(failures)} problem(s) did not finish; continue with `kflow eval --resume {eval_id} --db {db_path}`",
            code=1,
        )


def print_report(report: EvalReport) -> None:
    out.print(
        Text(
            clean(
                f"{report.eval_id}: {report.dataset}, {report.problems} problems, model {report.model}, "
                f"strategy {report.strategy}, status {report.status}"
                + (f", answers re-read by rule {report.answer_rule}" if report.answer_rule != "default" else "")
            ),
            style="bold",
        )
    )
    table = Table("iteration", "pass@1", "solved ≥1", "prompt tok", "completion tok", "cumulative tok")
    for f in report.per_iteration:
        table.add_row(
            str(f.iteration),
            f"{100 * f.accuracy:.1f}%",
            f"{100 * f.cumulative_solved:.1f}%",
            f"{f.prompt_tokens:,}",
            f"{f.completion_tokens:,}",
            f"{f.cumulative_tokens:,}",
        )
    out.print(table)
    out.print(
        f"label-free final answer accuracy ({report.final_answer_rule}): {100 * report.final_accuracy:.1f}%   "
        f"total tokens: {report.total_tokens:,}" + (f"   failed problems: {report.failed}" if report.failed else "")
    )
    if len(report.replicas) > 1:
        replicas = Table("replica", "requests", "failed", "rollouts", "prompt tok", "completion tok")
        for entry in report.replicas:
            replicas.add_row(
                str(entry["url"]),
                f"{entry['requests']:,}",
                f"{entry['failed_requests']:,}",
                f"{entry['rollouts']:,}",
                f"{entry['prompt_tokens']:,}",
                f"{entry['completion_tokens']:,}",
            )
        out.print(replicas)
    out.print(
        f"rollouts: {report.rollouts_done:,} of {report.rollouts_budget:,} (stop policy {report.stop_policy}); "
        f"saved by early stopping: {report.rollouts_saved:,} rollouts, about {report.tokens_saved_estimate:,} tokens"
    )


@app.command()
def report(
    run_id: Annotated[str, typer.Argument(help="The evaluation run.")],
    db: DbOpt = None,
    out_dir: Annotated[str, typer.Option("--out", help="Folder for the plot.")] = "results",
    compare: Annotated[list[str] | None, typer.Option("--compare", help="Other runs to overlay.")] = None,
    answer_rule: Annotated[
        str,
        typer.Option(
            "--answer-rule",
            help=f"Re-grade the stored outputs, without a request: {', '.join(ANSWER_RULES)} "
            "(paper: the original scripts' rule for the model family).",
        ),
    ] = "default",
    as_json: JsonOpt = False,
) -> None:
    """Accuracy per iteration, cumulative solved share, final-answer accuracy, tokens; a PNG plot."""
    try:
        check_rule(answer_rule)
        db_path = resolve_db(db)
        store: Store = open_store(db_path, must_exist=True)
        reports = []
        for name in [run_id, *(compare or [])]:
            if store.get_eval(name) is None:
                raise UsageError(f"no evaluation run {name!r} in {db_path}")
            reports.append(build_report(store, name, answer_rule))
    except (UsageError, ValueError) as exc:
        raise fail(str(exc)) from None
    plot = plot_reports(reports, Path(out_dir) / f"report_{'_vs_'.join(r.eval_id for r in reports)}.png")
    if as_json:
        payload: dict[str, Any] = {**reports[0].to_json(), "plot": str(plot)}
        if compare:
            payload["compare"] = [r.to_json() for r in reports[1:]]
        sys.stdout.write(json.dumps(payload) + "\n")
        return
    for item in reports:
        print_report(item)
    out.print(f"plot: {plot}")
