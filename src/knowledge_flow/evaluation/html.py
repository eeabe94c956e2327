"""The HTML report (`kflow report R [--compare ...] --html DIR`, or a single thread's run): one self-contained
page, ``DIR/index.html``, and the rollouts' full texts in pages next to it (``DIR/rollouts/*.html``).

The page holds the plots (accuracy by iteration and against cumulative tokens, embedded as PNG data), the
tables (accuracy per iteration with 95% Wilson intervals; with several runs, the paired comparison), and per
problem the trajectory: the answer of every rollout, right or wrong, the knowledge list as it grew, and a link
to each rollout's prompt and output. Nothing is loaded from elsewhere (no scripts, fonts or style sheets).

Templates live in ``knowledge_flow/templates`` and are rendered by a sandboxed Jinja2 environment with
autoescaping on: every text that comes from a model, a dataset or a user is escaped.
"""

from __future__ import annotations

import base64
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import PackageLoader, StrictUndefined, select_autoescape
from jinja2.sandbox import SandboxedEnvironment

from knowledge_flow.evaluation.compare import COLUMNS, RunComparison, cells
from knowledge_flow.evaluation.report import EvalReport, plot_reports
from knowledge_flow.evaluation.rows import EvalStore
from knowledge_flow.evaluation.trajectories import (
    evaluation_rollouts,
    iteration_records,
    knowledge_growth,
    rollout_records,
    share,
)
from knowledge_flow.persistence.store import RolloutStore, RunRow
from knowledge_flow.prompts.environment import strip_leading_colon
from knowledge_flow.text.answers import equivalent
from knowledge_flow.version import package_version

INDEX = "index.html"
TEXTS = "rollouts"


@dataclass
class Problem:
    """One problem's trajectory on the page."""

    anchor: str
    label: str
    problem: str
    gold: str | None
    status: str
    final_answer: str | None
    final_correct: bool | None
    texts: str
    """The page with its rollouts' texts, relative to the report."""
    rollouts: list[dict[str, Any]]
    knowledge: list[list[dict[str, Any]]]
    """The knowledge record after each iteration."""

    @property
    def chosen(self) -> list[dict[str, Any]]:
        """Each iteration's chosen rollout (the first of the iteration when none was chosen yet), in order."""
        by_iteration: dict[int, dict[str, Any]] = {}
        for rollout in self.rollouts:
            current = by_iteration.get(rollout["iteration"])
            if current is None or (rollout["chosen"] and not current["chosen"]):
                by_iteration[rollout["iteration"]] = rollout
        return [by_iteration[k] for k in sorted(by_iteration)]


@dataclass
class RunSection:
    """One run (an evaluation, or a single thread's run) on the page."""

    title: str
    facts: list[tuple[str, str]]
    iterations: list[dict[str, Any]]
    problems: list[Problem] = field(default_factory=list)


def environment() -> SandboxedEnvironment:
    env = SandboxedEnvironment(
        loader=PackageLoader("knowledge_flow", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters["percent"] = percent
    env.filters["interval"] = interval
    env.filters["strip_leading_colon"] = strip_leading_colon  # a section's raw text starts after its header
    return env


def png_data(draw: Callable[[Path], Path]) -> str:
    """A plot drawn by `draw` into a PNG file, as a ``data:`` URI (the page embeds it)."""
    with tempfile.TemporaryDirectory(prefix="kflow-plot-") as tmp:
        path = draw(Path(tmp) / "plot.png")
        return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def percent(value: float | None, digits: int = 1) -> str:
    """A share as a percentage; "n/a" where there is none (no problem finished)."""
    return "n/a" if value is None else f"{100 * value:.{digits}f}%"


def interval(low: float | None, high: float | None) -> str:
    """A 95% interval of a share in percent; "n/a" where there is none."""
    return "n/a" if low is None or high is None else f"{100 * low:.0f}–{100 * high:.0f}%"


def problem_view(anchor: str, label: str, problem: str, gold: str | None, rollouts: list[dict[str, Any]]) -> Problem:
    iterations = max((r["iteration"] + 1 for r in rollouts), default=0)
    return Problem(
        anchor=anchor,
        label=label,
        problem=problem,
        gold=gold,
        status="",
        final_answer=None,
        final_correct=None,
        texts=f"{TEXTS}/{anchor}.html",
        rollouts=rollouts,
        knowledge=knowledge_growth(rollouts, iterations),
    )


def evaluation_section(store: RolloutStore, report: EvalReport, index: int) -> RunSection:
    row = EvalStore(store).require_eval(report.eval_id)
    manifest = row.manifest
    final = share(report.final_accuracy, report.finished)
    facts = [
        ("dataset", report.dataset),
        ("model", report.model),
        ("strategy", report.strategy),
        ("prompt set", f"{manifest.get('prompt_set', '')} ({str(manifest.get('prompt_hash', ''))[:12]})"),
        ("status", f"{report.status}: {report.finished} of {report.problems} finished, {report.failed} failed"),
        (
            f"final-answer accuracy ({report.final_answer_rule})",
            f"{percent(final['value'])} (95% CI {interval(final['low'], final['high'])}), over the finished problems",
        ),
        ("tokens", f"{report.total_tokens:,} in {report.rollouts_done:,} rollouts"),
        ("answers read by", report.answer_rule),
    ]
    rollouts = evaluation_rollouts(store, report.eval_id)
    problems = []
    for item in EvalStore(store).eval_items(report.eval_id):
        mine = [r for r in rollouts if r["position"] == item.position]
        label = f"{item.position} (id {item.problem_id})"
        view = problem_view(f"run{index}-problem{item.position}", label, item.problem, item.gold, mine)
        view.status, view.final_answer, view.final_correct = item.status, item.final_answer, item.final_correct
        problems.append(view)
    return RunSection(report.eval_id, facts, iteration_records(report), problems)


def rollout_texts(store: RolloutStore, problem: Problem) -> list[dict[str, Any]]:
    """The full texts of a problem's rollouts (prompt messages, output, reasoning), read back from the store."""
    run_ids = dict.fromkeys(r["run_id"] for r in problem.rollouts)
    rows = {row.id: row for run_id in run_ids for row in store.rollouts(run_id)}
    return [
        {
            **record,
            "messages": rows[record["rollout_id"]].messages,
            "content": rows[record["rollout_id"]].content,
            "reasoning": rows[record["rollout_id"]].reasoning,
        }
        for record in problem.rollouts
        if record["rollout_id"] in rows
    ]


def write_pages(
    store: RolloutStore, folder: Path, title: str, sections: list[RunSection], plot: str, comparison: list[list[str]]
) -> Path:
    """Write the report page and its rollout pages into `folder`; returns the report page's path."""
    env = environment()
    (folder / TEXTS).mkdir(parents=True, exist_ok=True)
    for section in sections:
        for problem in section.problems:
            page = env.get_template("rollouts.html.j2").render(
                section=section.title,
                problem=problem,
                texts=rollout_texts(store, problem),
                back=f"../{INDEX}#{problem.anchor}",
            )
            (folder / problem.texts).write_text(page, encoding="utf-8")
    html = env.get_template("report.html.j2").render(
        title=title,
        generated=f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, knowledge-flow {package_version()}",
        plot=plot,
        sections=sections,
        columns=COLUMNS,
        comparison=comparison,
    )
    index = folder / INDEX
    index.write_text(html, encoding="utf-8")
    return index


def write_evaluation_report(
    store: RolloutStore, reports: Sequence[EvalReport], comparison: Sequence[RunComparison], folder: Path
) -> Path:
    """The report of evaluation runs (the first is the baseline of `comparison`); returns the page's path."""
    sections = [evaluation_section(store, report, index) for index, report in enumerate(reports)]
    plot = png_data(lambda path: plot_reports(list(reports), path))
    title = " vs ".join(r.eval_id for r in reports)
    return write_pages(store, folder, title, sections, plot, [cells(entry) for entry in comparison])


def write_thread_report(store: RolloutStore, run: RunRow, gold: str | None, folder: Path) -> Path:
    """The report of one thread's run (a `kflow solve` run, or one problem of an evaluation)."""
    from knowledge_flow.evaluation.html_plots import plot_thread

    rollouts = rollout_records(store, [run.run_id], {run.run_id: gold} if gold is not None else None)
    view = problem_view("thread", run.thread_id, run.problem, gold, rollouts)
    view.status, view.final_answer = run.status, run.final_answer
    if gold is not None:
        view.final_correct = equivalent(gold, run.final_answer, run.params.get("answer_type", "integer"))
    facts = [
        ("model", run.answered_by),
        ("strategy", run.strategy),
        ("prompt set", run.prompt_version),
        ("status", f"{run.status}: {run.iterations_done} iterations"),
        ("final answer", str(run.final_answer)),
        ("tokens", f"{sum(r['prompt_tokens'] + r['completion_tokens'] for r in rollouts):,}"),
    ]
    section = RunSection(f"thread {run.thread_id} (run {run.run_id})", facts, [], [view])
    plot = png_data(lambda path: plot_thread(rollouts, f"thread {run.thread_id}: {run.answered_by}", path))
    return write_pages(store, folder, f"thread {run.thread_id}", [section], plot, [])
