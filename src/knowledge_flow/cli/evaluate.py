"""`kflow eval` and `kflow report`: whole benchmarks, resumable, with paper-compatible results."""

from __future__ import annotations

import contextlib
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from knowledge_flow.cli.common import (
    BaseUrlOpt,
    DbOpt,
    JsonOpt,
    MaxRetriesOpt,
    TimeoutOpt,
    UsageError,
    check_base_url,
    clean,
    endpoint,
    err,
    fail,
    json_outcome,
    open_store,
    out,
    resolve_db,
    run_model,
    warn_withheld,
    write_json,
)
from knowledge_flow.cli.options import with_run_options
from knowledge_flow.cli.report import print_report
from knowledge_flow.context import DEFAULT_LOCAL_BASE_URL
from knowledge_flow.persistence.urls import shown

if TYPE_CHECKING:
    from knowledge_flow.evaluation.report import EvalReport
    from knowledge_flow.evaluation.runner import Progress as Counters
    from knowledge_flow.persistence.leases import Lease


@with_run_options
def evaluate(
    dataset: Annotated[
        str | None,
        typer.Option(
            help="aime25, aime24, gsm8k, math500, hf:ORG/NAME[:config][:split], or a .jsonl/.json/.parquet file."
        ),
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option(help="Problems in flight at once [default: 256; on resume: the run's].")
    ] = None,
    base_url: BaseUrlOpt = None,
    output_postfix: Annotated[
        str | None, typer.Option("--output-postfix", help="Results folder suffix (default: the strategy).")
    ] = None,
    output_dir: Annotated[str, typer.Option("--output-dir", help="Where results/ files go.")] = "results",
    db: DbOpt = None,
    limit: Annotated[int | None, typer.Option(help="Only the first K problems.")] = None,
    eval_id_given: Annotated[
        str | None,
        typer.Option("--eval-id", "--run-id", help="Name of this evaluation (--run-id: the older name)."),
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option(
            "--resume",
            help="Continue the evaluation run RUN_ID (with --iterations N above its budget: extend it).",
        ),
    ] = None,
    problem_field: Annotated[str | None, typer.Option("--problem-field", help="Problem column.")] = None,
    answer_field: Annotated[str | None, typer.Option("--answer-field", help="Gold answer column.")] = None,
    id_field: Annotated[str | None, typer.Option("--id-field", help="Id column.")] = None,
    progress_every: Annotated[
        float, typer.Option("--progress-every", min=0.1, help="Seconds between progress lines when not a terminal.")
    ] = 30.0,
    max_problems: Annotated[
        int | None,
        typer.Option(
            "--max-problems",
            min=0,
            help="Stop after claiming M problems (a job with a time limit); the others are left to other workers "
            "or a later resume. 0: create the evaluation and send nothing (workers then resume it).",
        ),
    ] = None,
    max_retries: MaxRetriesOpt = 6,
    request_timeout: TimeoutOpt = 3600.0,
    as_json: JsonOpt = False,
    *,
    options: dict[str, Any],
) -> None:
    """Evaluate a whole benchmark: one thread per problem, all in flight, resumable."""
    json_outcome(as_json)
    if resume is None and dataset is None:
        raise fail("--dataset is required (or --resume RUN_ID)")
    if concurrency is not None and concurrency < 1:
        raise fail("--concurrency must be at least 1")
    from knowledge_flow.context import Context
    from knowledge_flow.endpoint.client import describe
    from knowledge_flow.evaluation.claims import join, live_workers, release_all
    from knowledge_flow.evaluation.datasets import DatasetError
    from knowledge_flow.evaluation.report import build_report
    from knowledge_flow.evaluation.rows import EvalStore
    from knowledge_flow.evaluation.session import DatasetSpec, create_eval, execute, extend, new_eval_id
    from knowledge_flow.graph import compile_graph
    from knowledge_flow.interrupts import StopRequest, exit_now
    from knowledge_flow.params import resolve_params
    from knowledge_flow.persistence.checkpointer import get_checkpointer
    from knowledge_flow.persistence.leases import LeaseHeld, acquire, heartbeat_timeout

    given = {name: value for name, value in options.items() if value is not None}
    try:
        if concurrency is not None and concurrency < 1:
            raise UsageError("--concurrency must be at least 1")
        db_path = resolve_db(db)
        if resume is not None:
            store = open_store(db_path, must_exist=True, writable=True)
            row = EvalStore(store).get_eval(resume)
            if row is None:
                raise UsageError(f"no evaluation run {resume!r} in {shown(db_path)}")
            manifest = row.manifest
            check_unchanged(given, manifest["params"], f"run {resume!r}")
            loaded = DatasetSpec(**manifest["dataset_spec"]).load()
            if loaded.content_hash != row.dataset_hash:
                raise UsageError(f"the dataset {manifest['dataset']!r} changed since run {resume!r} started")
            eval_id = resume
            url = check_base_url(base_url or os.environ.get("KFLOW_BASE_URL") or manifest["endpoint"])
            warn_withheld(url)
            concurrency = concurrency or int(manifest.get("concurrency") or DEFAULT_CONCURRENCY)
            check_output_dir(Path(manifest["output_dir"]), manifest)
        else:
            if dataset is None:
                raise UsageError("--dataset is required (or --resume RUN_ID)")
            url = check_base_url(base_url or os.environ.get("KFLOW_BASE_URL") or DEFAULT_LOCAL_BASE_URL)
            source = dataset
            if Path(dataset).expanduser().suffix.lower() in (".jsonl", ".json", ".parquet"):
                source = str(Path(dataset).expanduser().resolve())
            answer_type = given.get("answer_type")
            if answer_type is not None and answer_type not in ("integer", "latex", "text"):
                raise UsageError(f"answer_type must be one of integer, latex, text, got {answer_type!r}")
            spec = DatasetSpec(source, problem_field, answer_field, id_field, answer_type, limit)
            loaded = spec.load()
            model = run_model(url, given.get("model"))
            longest = max((p.problem for p in loaded.problems), key=len)  # the prompt set is rendered on it
            params = dict(
                resolve_params({**given, "model": model, "answer_type": loaded.answer_type, "problem": longest})
            )
            eval_id = eval_id_given or new_eval_id()
            postfix = output_postfix or str(params["strategy"])
            folder = Path(output_dir).expanduser().resolve()
            check_output_dir(folder, {"params": params, "output_postfix": postfix})
            store = open_store(db_path, writable=True)
            if EvalStore(store).get_eval(eval_id) is not None:
                raise UsageError(f"evaluation run {eval_id!r} already exists; continue it with --resume {eval_id}")
            concurrency = concurrency or DEFAULT_CONCURRENCY
            create_eval(
                store,
                eval_id=eval_id,
                spec=spec,
                dataset=loaded,
                params=params,
                base_url=url,
                concurrency=concurrency,
                output_postfix=postfix,
                output_dir=str(folder),
            )
        heartbeat_timeout()  # a bad KFLOW_HEARTBEAT_TIMEOUT is refused before anything runs
        exclusive: Lease | None = None
        if store.dialect == "sqlite":  # one process per evaluation: its claims are this process's alone
            exclusive = acquire(store, f"evaluation run:{eval_id}")
            release_all(store, eval_id)
        elif resume is not None and "iterations" in given and live_workers(store, eval_id):
            held = live_workers(store, eval_id)[0]
            raise UsageError(
                f"evaluation run {eval_id} has workers running (pid {held.pid} on {held.host}); its budget can "
                "be extended when they have stopped"
            )
        lease = join(store, eval_id)
    except LeaseHeld as exc:
        raise fail(str(exc)) from None
    except (UsageError, ValueError, DatasetError) as exc:
        raise fail(str(exc)) from None

    def release() -> None:
        lease.release()
        if exclusive is not None:
            exclusive.release()

    resume_hint = f"`kflow eval --resume {eval_id} --db {shown(db_path)}`"
    err.print(
        Text(
            f"evaluation {clean(eval_id)}: {clean(loaded.name)}, {len(loaded.problems)} problems "
            f"(database {shown(db_path)})"
        )
    )
    display = ProgressDisplay(progress_every)
    checkpointer = get_checkpointer(db_path)
    graph = compile_graph(checkpointer)
    started = time.monotonic()
    with StopRequest() as stop:
        try:
            if resume is not None and "iterations" in given:
                before = extend(graph, store, eval_id, int(given["iterations"]))
                if before != given["iterations"]:
                    err.print(f"extended from {before} to {given['iterations']} iterations")
            model = str(EvalStore(store).require_eval(eval_id).manifest["params"]["model"])
            with endpoint(url, model) if max_problems != 0 else nullcontext(url) as live_url:
                context = Context(
                    base_url=live_url, db_path=db_path, max_retries=max_retries, request_timeout=request_timeout
                )
                row, results, written = execute(
                    graph=graph,
                    store=store,
                    eval_id=eval_id,
                    context=context,
                    concurrency=concurrency,
                    stop=stop.event,
                    lease=lease,
                    max_problems=max_problems,
                    on_start=display.start,
                    on_tick=display.tick,
                )
        except (UsageError, ValueError) as exc:
            display.stop()
            release()
            raise fail(str(exc)) from None
        except Exception as exc:  # the evaluation itself failed: what is complete is kept for resume
            display.stop()
            with contextlib.suppress(Exception):
                EvalStore(store).update_eval(eval_id, status="incomplete")
            release()
            reason = describe(exc, Context(base_url=url, db_path=db_path).secrets)
            raise fail(f"the evaluation stopped: {reason}; continue with {resume_hint}", code=1) from None
        display.stop()
        report = build_report(store, eval_id)
        if stop.requested:
            stopped = f"{stop.signal_name}: stopped; continue with {resume_hint}"
            show_outcome(report, written, as_json, status="stopped", reason=stopped)
            err.print(Text(stopped, style="bold yellow"))
            release()
            checkpointer.close()
            exit_now()
    release()
    checkpointer.close()
    failures = [r for r in results if r.error]
    count = max(len(failures), report.failed)
    unfinished = f"{count} problem(s) did not finish; continue with {resume_hint}" if count else None
    show_outcome(report, written, as_json, reason=unfinished)
    if not as_json:
        out.print(f"elapsed {time.monotonic() - started:.1f}s")
    if unfinished is not None:
        for failure in failures[:5]:
            err.print(Text(f"problem {failure.position} failed: {clean(failure.error, 300)}", style="red"))
        raise fail(unfinished, code=1)
    left = report.problems - report.finished
    if left and max_problems == 0:
        err.print(f"evaluation {eval_id} is ready; its workers run it with {resume_hint}")
    elif left and max_problems is not None and len(results) >= max_problems:
        err.print(f"this worker ran its {max_problems} problems; {left} are left: continue with {resume_hint}")


def show_outcome(
    report: EvalReport, written: list[Path], as_json: bool, *, status: str | None = None, reason: str | None = None
) -> None:
    """The evaluation's figures and prediction files: a table, or its one JSON object (with the status and the
    reason when it was stopped or problems did not finish)."""
    if as_json:
        extra = {"status": status} if status else {}
        write_json(
            {
                **report.to_json(),
                **extra,
                **({"reason": reason} if reason else {}),
                "predictions": [str(p) for p in written],
            }
        )
        return
    print_report(report)
    if written:
        complete = "" if report.finished == report.problems else f" of the {report.finished} finished problems"
        out.print(Text(clean(f"predictions{complete}: {written[0].parent} ({len(written)} files)")))


DEFAULT_CONCURRENCY = 256


def check_unchanged(given: dict[str, Any], stored: dict[str, Any], what: str) -> None:
    """Refuse options that a resumed run cannot change (its iteration budget can only grow)."""
    from knowledge_flow.options import flag_of, on_resume

    for name, value in given.items():
        if on_resume(name) == "extend":
            continue
        if stored.get(name) != value:
            raise UsageError(
                f"{flag_of(name)} cannot change when resuming {what} (it runs with {stored.get(name)!r}); "
                "start a new run for other settings"
            )


def check_output_dir(folder: Path, manifest: dict[str, Any]) -> None:
    """The predictions' folder must be creatable: no existing file on its path (checked before any request)."""
    from knowledge_flow.evaluation.predictions import predictions_dir

    target = predictions_dir(folder, manifest)
    for path in [target, *target.parents]:
        if path.exists():
            if not path.is_dir():
                raise UsageError(f"{path} is a file, not a folder; choose another --output-dir")
            break


class ProgressDisplay:
    """Progress on stderr: a rich progress bar on a terminal, else a plain line every `every` seconds (a log
    being tailed must tell progress from a hang)."""

    def __init__(self, every: float) -> None:
        self.every = every
        self.terminal = err.is_terminal
        self.counters: Counters | None = None
        self.last = 0.0
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
        self.task: TaskID | None = None

    def start(self, counters: Counters) -> None:
        self.counters = counters
        self.last = time.monotonic()
        if self.terminal:
            name = f"worker {counters.worker}" if counters.worker else "eval"
            self.task = self.bar.add_task(name, total=counters.rollouts_total, problems="", tokens="0", acc="—")
            self.bar.start()
        else:
            err.print(counters.line())
        self.tick()

    def tick(self) -> None:
        c = self.counters
        if c is None:
            return
        if not self.terminal:
            if time.monotonic() - self.last >= self.every:
                self.last = time.monotonic()
                err.print(c.line())
            return
        if self.task is None:
            return
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
        if self.counters is None:
            return
        if self.terminal:
            self.tick()
            self.bar.stop()
        else:
            err.print(self.counters.line())
        self.counters = None
