"""Figures of an evaluation run: per-iteration accuracy, cumulative solved share, tokens; table and plot."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from knowledge_flow.evaluation.budgets import TokenCurve
from knowledge_flow.evaluation.integrity import check_evaluation
from knowledge_flow.evaluation.revote import check_complete, finals_after_waves, reread_votes, stored_votes
from knowledge_flow.evaluation.rows import EvalItemRow, EvalStore
from knowledge_flow.evaluation.traces import TraceFigures, graded_traces, trace_figures
from knowledge_flow.persistence.store import RolloutStore, StoreDamaged
from knowledge_flow.records import TraceVote
from knowledge_flow.strategies.genselect import final_call_id
from knowledge_flow.strategies.policies import final_answer, selects_final, votes_traces
from knowledge_flow.text.answer_rules import check_rule, regrade_answer
from knowledge_flow.text.answers import equivalent

ROLLOUT_COUNTS = ("rollouts", "failed_rollouts", "truncated_rollouts", "retried_rollouts")


@dataclass(frozen=True)
class IterationFigures:
    iteration: int
    accuracy: float | None
    """pass@1 of rollout k: share of the finished problems whose rollout k is correct (None: none finished)."""
    cumulative_solved: float | None
    """Share of the finished problems solved at least once in rollouts 0..k."""
    final_accuracy: float | None
    """Share of the finished problems whose label-free final answer would be correct had the run stopped
    after k."""
    prompt_tokens: int
    completion_tokens: int
    cumulative_tokens: int
    rollouts: int = 0
    failed_rollouts: int = 0
    truncated_rollouts: int = 0
    retried_rollouts: int = 0
    trace_accuracy: float | None = None
    """pass@1 over the iteration's traces (all thinkers; RSA: the population), finished problems."""
    cumulative_tokens_per_problem: float = 0.0
    """Tokens per problem up to this iteration, its stored calls included (GenSelect, reflections, managers):
    the common axis of runs compared at equal compute."""


@dataclass(frozen=True)
class EvalReport:
    eval_id: str
    dataset: str
    model: str
    strategy: str
    status: str
    problems: int
    finished: int
    failed: int
    iterations: int
    final_accuracy: float | None
    """Share of the finished problems whose label-free final answer is correct (None: none finished)."""
    total_tokens: int
    per_iteration: list[IterationFigures]
    rollouts_done: int
    """Rollouts stored (finished problems or not)."""
    rollouts_budget: int
    rollouts_saved: int
    """Rollouts not needed because problems stopped early (stop policy `stable:K`)."""
    tokens_saved_estimate: int
    """Saved rollouts times this run's mean tokens per rollout."""
    stop_policy: str
    final_answer_rule: str
    replicas: list[dict[str, Any]]
    """Per endpoint, from the stored rollouts: rollouts, tokens, failed, cut-off and retried rollouts."""
    failed_rollouts: int
    """Rollouts stored as failed (no usable response after retries)."""
    truncated_rollouts: int
    """Rollouts cut off at the token limit (finish_reason length)."""
    retried_rollouts: int
    """Rollouts whose iteration sent requests again (an unusable response, a failed replica)."""
    answer_rule: str = "default"
    """How answers were read from the outputs (see `knowledge_flow.text.answer_rules`)."""
    workers: list[dict[str, Any]] = field(default_factory=list)
    """Which worker ran what: per worker (``HOST:PID``) the problems it finished, the rollouts it ran and their
    tokens."""
    traces: TraceFigures | None = None
    """Per trace: pass@1 over every trace, maj@k (see `evaluation.traces`)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Grades:
    """One problem's grades: per iteration, for its label-free final answer, and for the final answer it
    would have had after each iteration; the answers graded."""

    correct: list[bool]
    final_correct: bool
    final_by_iteration: list[bool]
    answers: list[str | None] = field(default_factory=list)
    final: str | None = None


def final_by_iteration(
    gold: str,
    answers: list[str | None],
    rule: str,
    answer_type: Any,
    votes: list[TraceVote] | None = None,
    pool: Literal["all", "last"] = "all",
) -> list[bool]:
    """Per iteration k, whether the final answer after k is right: a rule over the answers of iterations
    0..k, or for a rule that votes over every trace, over the traces of iterations 0..k (`votes`; without them
    such a rule refuses; ``genselect``: its fallback over its `pool`, see `revote.finals_after_waves`)."""
    return [equivalent(gold, final, answer_type) for final in finals_of(rule, answers, answer_type, votes, pool)]


def finals_of(
    rule: str,
    answers: list[str | None],
    answer_type: Any,
    votes: list[TraceVote] | None,
    pool: Literal["all", "last"] = "all",
) -> list[str | None]:
    """The final answer after each iteration (see `final_by_iteration`)."""
    if votes is not None:
        return finals_after_waves(rule, answers, votes, answer_type, pool)
    return [final_answer(rule, answers[: k + 1], answer_type) for k in range(len(answers))]


def item_label(item: EvalItemRow) -> str:
    return f"problem {item.problem_id} (thread {item.thread_id})"


def stored_grades(store: RolloutStore, items: list[EvalItemRow], params: dict[str, Any]) -> list[Grades]:
    """The grades the run recorded (its own answer parser); the answer after each iteration from the stored
    traces when the final-answer rule votes over them (`evaluation.revote`)."""
    rule = str(params.get("final_answer_rule", "last"))
    votes = stored_votes(store, [item.run_id for item in items if item.run_id]) if votes_traces(rule) else None
    pool = pool_of(params)
    grades = []
    for item in items:
        found = None if votes is None else votes.get(item.run_id or "", [])
        if found is not None and item.status == "done":
            check_complete(item_label(item), len(item.answers), found, rule)
        finals = final_by_iteration(item.gold, item.answers, rule, params["answer_type"], found, pool)
        if selects_final(rule) and item.status == "done" and finals:  # the call's choice, as the run recorded it
            finals[-1] = bool(item.final_correct)
        grades.append(
            Grades(list(item.correct), bool(item.final_correct), finals, list(item.answers), item.final_answer)
        )
    return grades


def pool_of(params: dict[str, Any]) -> Literal["all", "last"]:
    """The pool of a final answer chosen among traces (the run's strategy's)."""
    from knowledge_flow.strategies import get_strategy

    return get_strategy(str(params.get("strategy", "knowledge-flow"))).final_pool


def chosen_final(store: RolloutStore, run_id: str, waves: int) -> str | None:
    """The trace a ``genselect`` final answer's call chose (its rollout id), if it chose one."""
    call = store.get_call(final_call_id(run_id, waves - 1))
    outcome = call.outcome if call is not None else None
    return str(outcome["rollout_id"]) if outcome and outcome.get("rollout_id") else None


def regraded(store: RolloutStore, items: list[EvalItemRow], params: dict[str, Any], rule: str) -> list[Grades]:
    """Grades of finished problems with answers read again from the stored outputs by `rule`; no request is
    sent. A final-answer rule that votes over every trace votes over every trace's answer read again."""
    answer_type = params["answer_type"]
    family = str(params.get("model_family", "instruct"))
    final_rule = str(params.get("final_answer_rule", "last"))
    chosen = store.chosen_rows([item.run_id for item in items if item.run_id])
    grades = []
    for item in items:
        rows = chosen.get(item.run_id or "", {})
        done = len(item.answers)
        if any(k not in rows for k in range(done)):  # matched by iteration, never by position
            raise StoreDamaged(f"problem {item.position}: a chosen rollout of its first {done} iterations is missing")
        answers = [
            regrade_answer(rule, rows[k].text_to_parse(), rows[k].reasoning, answer_type, family) for k in range(done)
        ]
        votes = None
        if votes_traces(final_rule):
            votes = reread_votes(store, item.run_id, rule, answer_type, family) if item.run_id else []
            if item.status == "done":
                check_complete(item_label(item), len(answers), votes, final_rule)
        finals = finals_of(final_rule, answers, answer_type, votes, pool_of(params))
        if votes is not None and selects_final(final_rule) and finals:  # the trace the call chose, read again
            picked = chosen_final(store, item.run_id or "", len(answers))
            finals[-1] = next((v["answer"] for v in votes if v["rollout_id"] == picked), finals[-1])
        final = finals[-1] if finals else None
        grades.append(
            Grades(
                [equivalent(item.gold, answer, answer_type) for answer in answers],
                item.status == "done" and equivalent(item.gold, final, answer_type),
                [equivalent(item.gold, answer, answer_type) for answer in finals],
                answers,
                final,
            )
        )
    return grades


def calls_by_iteration(store: RolloutStore, run_ids: list[str]) -> dict[int, int]:
    """Tokens (prompt and completion) of the runs' stored calls (reflection, manager, verifier, GenSelect), by
    the iteration they belong to."""
    tokens: dict[int, int] = {}
    for run_id in run_ids:
        for call in store.calls(run_id):
            tokens[call.iteration] = tokens.get(call.iteration, 0) + call.prompt_tokens + call.completion_tokens
    return tokens


def answering_model(store: RolloutStore, items: list[EvalItemRow], requested: str) -> str:
    """The model(s) that answered the evaluation's runs, as their endpoints reported them (`RunRow.answered_by`);
    the model requested when no run has started."""
    runs = [store.get_run(item.run_id) for item in items if item.run_id]
    names = sorted({run.answered_by for run in runs if run is not None})
    return ", ".join(names) or requested


def share(count: int, total: int) -> float | None:
    """`count` of `total` as a fraction; None (n/a) when there is nothing to count."""
    return count / total if total else None


def finished_items(items: list[EvalItemRow]) -> list[EvalItemRow]:
    """The problems that finished: every share of a report is over them."""
    return [item for item in items if item.status == "done"]


def grade(store: RolloutStore, items: list[EvalItemRow], params: dict[str, Any], answer_rule: str) -> list[Grades]:
    """The grades of the finished problems among `items` (`finished_items`): as the run recorded them, or with
    answers read again by `answer_rule`."""
    check_rule(answer_rule)
    finished = finished_items(items)
    if answer_rule == "default":
        return stored_grades(store, finished, params)
    return regraded(store, finished, params, answer_rule)


def build_report(
    store: RolloutStore, eval_id: str, answer_rule: str = "default", grades: list[Grades] | None = None
) -> EvalReport:
    """The evaluation's figures; `StoreDamaged` (nothing computed) when its stored rows cannot be trusted;
    `grades`: its finished problems' grades when already computed (`grade`).

    Every share is over the problems that finished (None when none did): an interrupted or partly failed
    run is reported as what it is, "N of M finished". Rollouts and tokens are those stored, finished
    problems or not."""
    check_evaluation(store, eval_id)
    evals = EvalStore(store)
    row = evals.require_eval(eval_id)
    params = row.manifest["params"]
    items = list(evals.eval_items(eval_id))
    iterations = int(params["iterations"])
    finished = finished_items(items)
    grades = grades if grades is not None else grade(store, items, params, answer_rule)
    replicas, by_iteration = store.rollout_stats(list(evals.item_runs(items).values()))
    counts = {entry["iteration"]: entry for entry in by_iteration}
    traces = trace_figures(graded_traces(store, items, params, answer_rule))
    per_trace = traces.per_iteration if traces is not None else []
    figures: list[IterationFigures] = []
    total = sum(1 for item in items if item.run_id)  # tokens per problem: over the problems that started
    call_tokens = calls_by_iteration(store, [item.run_id for item in items if item.run_id])
    axis_tokens = 0
    solved = [False] * len(finished)
    cumulative_tokens = 0
    for k in range(iterations):
        correct = final_correct = 0
        for index, graded in enumerate(grades):
            if graded.correct[k] if k < len(graded.correct) else graded.final_correct:  # stopped early: final
                correct += 1
                solved[index] = True
            by_k = graded.final_by_iteration
            final_correct += int(by_k[k] if k < len(by_k) else graded.final_correct)
        stored = counts.get(k, {})
        prompt, completion = int(stored.get("prompt_tokens", 0)), int(stored.get("completion_tokens", 0))
        cumulative_tokens += prompt + completion
        axis_tokens += prompt + completion + call_tokens.get(k, 0)
        figures.append(
            IterationFigures(
                iteration=k,
                accuracy=share(correct, len(finished)),
                cumulative_solved=share(sum(solved), len(finished)),
                final_accuracy=share(final_correct, len(finished)),
                prompt_tokens=prompt,
                completion_tokens=completion,
                cumulative_tokens=cumulative_tokens,
                **{key: int(stored.get(key, 0)) for key in ROLLOUT_COUNTS},
                trace_accuracy=per_trace[k] if k < len(per_trace) else None,
                cumulative_tokens_per_problem=axis_tokens / total if total else 0.0,
            )
        )
    thinkers = int(params.get("thinkers", 1))
    done = sum(int(entry["rollouts"]) for entry in by_iteration)
    budget = len(items) * iterations * thinkers
    saved = sum(iterations - len(item.answers) for item in finished) * thinkers
    per_rollout = cumulative_tokens / done if done else 0.0
    return EvalReport(
        eval_id=eval_id,
        dataset=row.dataset,
        model=answering_model(store, items, str(params["model"])),
        strategy=str(params["strategy"]),
        status=row.status,
        problems=len(items),
        finished=len(finished),
        failed=sum(1 for item in items if item.status == "failed"),
        iterations=iterations,
        final_accuracy=share(sum(1 for graded in grades if graded.final_correct), len(finished)),
        total_tokens=cumulative_tokens,
        per_iteration=figures,
        rollouts_done=done,
        rollouts_budget=budget,
        rollouts_saved=saved,
        tokens_saved_estimate=int(saved * per_rollout),
        replicas=replicas,
        failed_rollouts=sum(int(e["failed_rollouts"]) for e in replicas),
        truncated_rollouts=sum(int(e["truncated_rollouts"]) for e in replicas),
        retried_rollouts=sum(int(e["retried_rollouts"]) for e in replicas),
        stop_policy=str(params.get("stop_policy", "fixed")),
        final_answer_rule=str(params.get("final_answer_rule", "last")),
        answer_rule=answer_rule,
        workers=worker_figures(store, items),
        traces=traces,
    )


def token_curve(report: EvalReport) -> TokenCurve:
    """The run's final-answer accuracy after each iteration against its cumulative tokens per problem."""
    return TokenCurve(
        report.eval_id,
        [
            (f.cumulative_tokens_per_problem, f.final_accuracy)
            for f in report.per_iteration
            if f.final_accuracy is not None
        ],
    )


def worker_figures(store: RolloutStore, items: list[EvalItemRow]) -> list[dict[str, Any]]:
    """Per worker: problems finished, rollouts run, their tokens (a problem taken over from a worker that died
    counts for the one that finished it; its rollouts for the one that ran each)."""
    finished: dict[str, int] = {}
    for item in items:
        if item.status == "done" and item.worker:
            finished[item.worker] = finished.get(item.worker, 0) + 1
    ran = store.worker_stats([item.run_id for item in items if item.run_id])
    names = sorted(set(finished) | set(ran))
    return [
        {
            "worker": name,
            "problems": finished.get(name, 0),
            "rollouts": ran.get(name, {}).get("rollouts", 0),
            "tokens": ran.get(name, {}).get("tokens", 0),
        }
        for name in names
    ]


def percent(value: float | None) -> float:
    """A share as a percentage to plot (NaN, an empty point, where no problem finished)."""
    return math.nan if value is None else 100 * value


def plot_title(reports: list[EvalReport]) -> str:
    """Runs, models and dataset of a figure; says so when the runs are on different datasets."""
    runs = ", ".join(r.eval_id for r in reports)
    models = ", ".join(sorted({r.model for r in reports}))
    datasets = sorted({r.dataset for r in reports})
    where = datasets[0] if len(datasets) == 1 else f"DIFFERENT DATASETS: {'; '.join(datasets)}"
    return f"{runs}\nmodel {models} - {where}"


def plot_reports(reports: list[EvalReport], path: Path) -> Path:
    """Three panels, runs overlaid: accuracy against iteration (pass@1, solved at least once, the label-free
    final answer had the run stopped there, and for runs with several traces per iteration the pass@1 of the
    iteration's traces), cumulative tokens against iteration, and the test-time scaling curve: final-answer
    accuracy against cumulative tokens per problem, the common axis of runs at equal compute."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(17, 5.2))
    for report in reports:
        xs = [f.iteration for f in report.per_iteration]
        label = f"{report.eval_id} ({report.strategy}, {report.final_answer_rule})"
        (line,) = left.plot(
            xs, [percent(f.accuracy) for f in report.per_iteration], marker=".", label=f"{label} pass@1"
        )
        color = line.get_color()
        dashed = [("cumulative_solved", "--", "solved at least once"), ("final_accuracy", ":", "final answer")]
        if report.traces is not None and report.traces.most_traces > len(report.per_iteration):
            dashed.append(("trace_accuracy", "-.", "pass@1 of the iteration's traces"))
        for name, style, what in dashed:
            values = [percent(getattr(f, name)) for f in report.per_iteration]
            left.plot(xs, values, linestyle=style, color=color, label=f"{label} {what}")
        middle.plot(xs, [f.cumulative_tokens for f in report.per_iteration], marker=".", color=color, label=label)
        curve = token_curve(report).points
        right.plot([t for t, _ in curve], [100 * a for _, a in curve], marker=".", color=color, label=label)
    for axis in (left, middle):
        axis.set_xlabel("iteration")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.set_ylabel("accuracy (%)")
    left.set_ylim(0, 100)
    middle.set_ylabel("cumulative tokens")
    right.set_xlabel("cumulative tokens per problem (equal compute)")
    right.set_ylabel("final-answer accuracy (%)")
    right.set_ylim(0, 100)
    for axis in (left, middle, right):
        axis.grid(alpha=0.3)
    handles, labels = left.get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize="small", frameon=False)
    figure.suptitle(plot_title(reports))
    figure.tight_layout(rect=(0, 0.06 + 0.035 * ((len(labels) - 1) // 3), 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
