"""`kflow report`: an evaluation run's figures, TRT's and DeepConf's where the runs have them, and runs side by
side (`--compare`: the first run is the baseline of the paired comparison)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text

from knowledge_flow.cli.common import (
    DbOpt,
    JsonOpt,
    UsageError,
    clean,
    database_failure,
    err,
    fail,
    json_outcome,
    open_store,
    out,
    resolve_db,
    table,
    write_json,
)
from knowledge_flow.cli.show_figures import counted_by_client
from knowledge_flow.persistence.urls import shown

if TYPE_CHECKING:
    from knowledge_flow.evaluation.budgets import EqualTokens
    from knowledge_flow.evaluation.compare import RunComparison
    from knowledge_flow.evaluation.report import EvalReport
    from knowledge_flow.persistence.store import RolloutStore


def percent(value: float | None) -> str:
    """A share as shown: a percentage, or n/a where no problem finished."""
    return "n/a" if value is None else f"{100 * value:.1f}%"


def print_report(report: EvalReport) -> None:
    answers = f", answers re-read by rule {report.answer_rule}" if report.answer_rule != "default" else ""
    out.print(
        Text(
            clean(
                f"{report.eval_id}: {report.dataset}, {report.problems} problems, model {report.model}, "
                f"strategy {report.strategy}, status {report.status}{answers}"
            ),
            style="bold",
        )
    )
    finished = f"{report.finished} of {report.problems} finished"
    if report.finished < report.problems:
        out.print(f"shares are over the problems that finished: {finished}")
    iterations = table(
        "iteration",
        "pass@1",
        "solved ≥1",
        f"final ({report.final_answer_rule})",
        "rollouts",
        "failed",
        "cut off",
        "retried",
        "prompt tok",
        "completion tok",
        "cumulative tok",
    )
    for f in report.per_iteration:
        iterations.add_row(
            str(f.iteration),
            percent(f.accuracy),
            percent(f.cumulative_solved),
            percent(f.final_accuracy),
            str(f.rollouts),
            str(f.failed_rollouts),
            str(f.truncated_rollouts),
            str(f.retried_rollouts),
            f"{f.prompt_tokens:,}",
            f"{f.completion_tokens:,}",
            f"{f.cumulative_tokens:,}",
        )
    out.print(iterations)
    out.print(
        f"label-free final answer accuracy ({report.final_answer_rule}): {percent(report.final_accuracy)} "
        f"({finished})   "
        f"total tokens: {report.total_tokens:,}   rollouts failed: {report.failed_rollouts:,}, cut off at the "
        f"token limit: {report.truncated_rollouts:,}, retried: {report.retried_rollouts:,}"
        + (f"   failed problems: {report.failed}" if report.failed else "")
    )
    if len(report.replicas) > 1 or report.failed_rollouts:
        replicas = table("endpoint", "rollouts", "failed", "cut off", "retried", "prompt tok", "completion tok")
        for entry in report.replicas:
            replicas.add_row(
                Text(clean(str(entry["url"]))),
                f"{entry['rollouts']:,}",
                f"{entry['failed_rollouts']:,}",
                f"{entry['truncated_rollouts']:,}",
                f"{entry['retried_rollouts']:,}",
                f"{entry['prompt_tokens']:,}",
                f"{entry['completion_tokens']:,}",
            )
        out.print(replicas)
    if len(report.workers) > 1:
        workers = table("worker", "problems finished", "rollouts run", "tokens")
        for entry in report.workers:
            workers.add_row(
                Text(clean(entry["worker"])), f"{entry['problems']:,}", f"{entry['rollouts']:,}", f"{entry['tokens']:,}"
            )
        out.print(workers)
    out.print(
        f"rollouts: {report.rollouts_done:,} of {report.rollouts_budget:,} (stop policy {report.stop_policy}); "
        f"saved by early stopping: {report.rollouts_saved:,} rollouts, about {report.tokens_saved_estimate:,} tokens"
    )
    print_traces(report)


def print_traces(report: EvalReport) -> None:
    """Per trace: pass@1 over every trace, maj@k, pass@1 of each iteration's traces."""
    traces = report.traces
    if traces is None:
        return
    counts = (
        f"{traces.fewest_traces}"
        if traces.fewest_traces == traces.most_traces
        else f"{traces.fewest_traces}-{traces.most_traces}"
    )
    per_trace = table("traces per problem", "pass@1 (all traces)", *(f"maj@{k}" for k in traces.maj_at_k))
    per_trace.add_row(
        counts, f"{100 * traces.pass_at_1:.1f}%", *(f"{100 * value:.1f}%" for value in traces.maj_at_k.values())
    )
    out.print(per_trace)
    if traces.most_traces > len(report.per_iteration):
        shares = " / ".join(
            "n/a" if f.trace_accuracy is None else f"{100 * f.trace_accuracy:.0f}" for f in report.per_iteration
        )
        out.print(f"pass@1 of each iteration's traces (%): {shares}")


def report(
    run_id: Annotated[str, typer.Argument(help="The evaluation run.")],
    db: DbOpt = None,
    out_dir: Annotated[str, typer.Option("--out", help="Folder for the plot.")] = "results",
    compare: Annotated[
        list[str] | None,
        typer.Option(
            "--compare",
            help="Other runs to overlay and to pair with this one (the baseline): accuracy with 95% Wilson "
            "intervals, wins/losses on the same problems with the exact McNemar p, tokens, flips.",
        ),
    ] = None,
    answer_rule: Annotated[
        str,
        typer.Option(
            "--answer-rule",
            help="Re-grade the stored outputs, without a request: default, last-boxed, first-boxed, last-integer, "
            "paper (the original scripts' rule for the model family).",
        ),
    ] = "default",
    as_json: JsonOpt = False,
    html: Annotated[
        str | None,
        typer.Option(
            "--html",
            help="Also write an HTML report into this folder: one self-contained page (plots, tables with intervals, "
            "each problem's trajectory) and the rollouts' texts next to it. RUN may also be a thread (kflow solve).",
        ),
    ] = None,
) -> None:
    """Accuracy per iteration, cumulative solved share, final-answer accuracy, tokens; per trace pass@1 and
    maj@k; TRT rounds and DeepConf stops where the runs have them; with --compare, the runs side by side and at
    equal tokens per problem; a PNG plot; with --html, a page."""
    from knowledge_flow.cli import html_report
    from knowledge_flow.evaluation.budgets import equal_tokens
    from knowledge_flow.evaluation.compare import compare_runs, records_from_grades
    from knowledge_flow.evaluation.integrity import check_evaluation
    from knowledge_flow.evaluation.report import build_report, finished_items, grade, plot_reports, token_curve
    from knowledge_flow.evaluation.rows import EvalStore
    from knowledge_flow.persistence.seals import StoreDamaged
    from knowledge_flow.text.answer_rules import check_rule

    json_outcome(as_json)
    try:
        check_rule(answer_rule)
        db_path = resolve_db(db)
        folder = Path(out_dir).expanduser()
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"{folder} is a file, not a folder; choose another --out")
        store: RolloutStore = open_store(db_path, must_exist=True)
        if html is not None and html_report.html_folder(html) and not compare and not EvalStore(store).get_eval(run_id):
            html_report.thread_page(store, db_path, run_id, html, as_json)
            return
        reports, records = [], []
        for name in [run_id, *(compare or [])]:
            row = EvalStore(store).get_eval(name)
            if row is None:
                raise UsageError(f"no evaluation run {name!r} in {shown(db_path)}")
            check_evaluation(store, name)  # the rows are checked before anything is graded from them
            items = list(EvalStore(store).eval_items(name))
            grades = grade(store, items, row.manifest["params"], answer_rule)
            reports.append(build_report(store, name, answer_rule, grades))
            records.append(records_from_grades(name, finished_items(items), grades))
    except (UsageError, ValueError) as exc:
        raise fail(str(exc)) from None
    except StoreDamaged as exc:
        message = f"{database_failure(exc, db_path)}. No figures are computed from it; restore it from a copy"
        raise fail(message, 1, status="damaged") from None
    plot = plot_reports(reports, folder / f"report_{'_vs_'.join(r.eval_id for r in reports)}.png")
    datasets = sorted({r.dataset for r in reports})
    if len(datasets) > 1:
        named = clean("; ".join(datasets))
        err.print(Text(f"warning: the runs compared are on different datasets: {named}", style="yellow"))
    strategies = [strategy_totals(store, r.eval_id) for r in reports]
    comparison = compare_runs(records) if compare else []
    matched = equal_tokens([token_curve(r) for r in reports]) if compare else None
    page = html_report.write_evaluations(store, reports, comparison, html) if html is not None else None
    if as_json:
        payload: dict[str, Any] = {
            **reports[0].to_json(),
            "strategy_figures": strategies[0],
            "plot": str(plot),
            "same_dataset": len(datasets) == 1,
            **({"html": str(page)} if page is not None else {}),
        }
        if compare:
            others = zip(reports[1:], strategies[1:], strict=True)
            payload["compare"] = [r.to_json() | {"strategy_figures": f} for r, f in others]
            payload["comparison"] = [entry.to_json() for entry in comparison]
            payload["equal_tokens"] = matched.to_json() if matched is not None else None
        write_json(payload)
        return
    for item, figures in zip(reports, strategies, strict=True):
        print_report(item)
        print_strategy_totals(figures)
    if comparison:
        print_comparison(comparison)
    if matched is not None:
        print_equal_tokens(matched)
    out.print(f"plot: {plot}")
    if page is not None:
        out.print(Text(clean(f"html report: {page}")))


def strategy_totals(store: RolloutStore, eval_id: str) -> dict[str, Any] | None:
    """TRT's per-round agreement and DeepConf's stops over the evaluation's problems (None for runs of other
    strategies, which have neither)."""
    from knowledge_flow.evaluation.rows import EvalStore
    from knowledge_flow.figures import totals

    run_ids = [item.run_id for item in EvalStore(store).eval_items(eval_id) if item.run_id]
    figures = totals(store, run_ids)
    if not figures["trt_rounds"] and not figures["deepconf"]["runs"] and not figures["calls"]["calls"]:
        return None
    return figures


def print_strategy_totals(figures: dict[str, Any] | None) -> None:
    if figures is None:
        return
    if figures["trt_rounds"]:
        rounds = table("round", "problems", "mean agreement", "answer changed")
        for entry in figures["trt_rounds"]:
            rounds.add_row(
                str(entry["round"]),
                str(entry["runs"]),
                f"{100 * entry['mean_agreement']:.0f}%",
                f"{100 * entry['answer_changed_share']:.0f}%",
            )
        out.print(rounds)
    calls = figures["calls"]
    if calls["calls"]:
        kinds = ", ".join(f"{kind} {count:,}" for kind, count in sorted(calls["kinds"].items()))
        out.print(
            f"calls outside the rollouts: {calls['calls']:,} ({kinds}), "
            f"{calls['prompt_tokens']:,}+{calls['completion_tokens']:,} tokens (counted in the tokens above)"
        )
    deepconf = figures["deepconf"]
    if deepconf["runs"]:
        tokens = deepconf["tokens"]
        inactive = deepconf["filter_inactive"]
        out.print(
            f"DeepConf: {deepconf['traces']:,} traces, {deepconf['stopped']:,} stopped by the client below the "
            f"threshold ({tokens['paid_by_stopped']:,} tokens paid), {deepconf['consensus_cancelled']:,} cancelled "
            f"at consensus ({tokens['paid_by_cancelled']:,} tokens paid), {deepconf['below_threshold']:,} finished "
            f"below it, {deepconf['counted']:,} voted; tokens saved (estimated): {tokens['saved_by_stops_estimate']:,} "
            f"by stops, {tokens['saved_by_consensus_estimate']:,} by early consensus"
            + (f"; online filter {deepconf['online_filter']} on {inactive} problem(s)" if inactive else "")
            + counted_by_client(tokens)
        )


def print_comparison(comparison: list[RunComparison]) -> None:
    from knowledge_flow.evaluation.compare import COLUMNS, cells

    side_by_side = table(*COLUMNS)
    for entry in comparison:
        side_by_side.add_row(*(Text(clean(cell)) for cell in cells(entry)))
    out.print(side_by_side)


def print_equal_tokens(matched: EqualTokens) -> None:
    """The runs' final-answer accuracy at the token budgets (per problem) every run reaches."""
    if not matched.budgets:
        out.print("at equal tokens: no budget that every run reaches (their token ranges do not overlap)")
        return
    side_by_side = table("tokens/problem", *matched.accuracy)
    for at, budget in enumerate(matched.budgets):
        side_by_side.add_row(f"{budget:,.0f}", *(f"{100 * values[at]:.1f}%" for values in matched.accuracy.values()))
    out.print(Text("final-answer accuracy at equal tokens per problem (the last iteration within each budget)"))
    out.print(side_by_side)
