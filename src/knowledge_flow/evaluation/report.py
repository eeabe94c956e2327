"""Figures of an evaluation run: per-iteration accuracy, cumulative solved share, tokens; table and plot."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from knowledge_flow.evaluation.rows import EvalItemRow, EvalStore
from knowledge_flow.persistence.store import RolloutStore
from knowledge_flow.strategies.policies import final_answer
from knowledge_flow.text.answer_rules import check_rule, regrade_answer
from knowledge_flow.text.answers import equivalent

ROLLOUT_COUNTS = ("rollouts", "failed_rollouts", "truncated_rollouts", "retried_rollouts")


@dataclass(frozen=True)
class IterationFigures:
    iteration: int
    accuracy: float
    """pass@1 of rollout k: share of problems whose rollout k is correct."""
    cumulative_solved: float
    """Share of problems solved at least once in rollouts 0..k."""
    final_accuracy: float
    """Share of problems whose label-free final answer would be correct had the run stopped after k."""
    prompt_tokens: int
    completion_tokens: int
    cumulative_tokens: int
    rollouts: int = 0
    failed_rollouts: int = 0
    truncated_rollouts: int = 0
    retried_rollouts: int = 0


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
    final_accuracy: float
    """Share of problems whose label-free final answer is correct."""
    total_tokens: int
    per_iteration: list[IterationFigures]
    rollouts_done: int
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

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Grades:
    """One problem's grades: per iteration, for its label-free final answer, and for the final answer it
    would have had after each iteration."""

    correct: list[bool]
    final_correct: bool
    final_by_iteration: list[bool]


def final_by_iteration(gold: str, answers: list[str | None], rule: str, answer_type: Any) -> list[bool]:
    return [
        equivalent(gold, final_answer(rule, answers[: k + 1], answer_type), answer_type) for k in range(len(answers))
    ]


def stored_grades(items: list[EvalItemRow], params: dict[str, Any]) -> list[Grades]:
    """The grades the run recorded (its own answer parser)."""
    rule = str(params.get("final_answer_rule", "last"))
    return [
        Grades(
            list(item.correct),
            bool(item.final_correct),
            final_by_iteration(item.gold, item.answers, rule, params["answer_type"]),
        )
        for item in items
    ]


def regraded(store: RolloutStore, items: list[EvalItemRow], params: dict[str, Any], rule: str) -> list[Grades]:
    """Grades with answers read again from the stored outputs by `rule`; no request is sent."""
    answer_type = params["answer_type"]
    family = str(params.get("model_family", "instruct"))
    final_rule = str(params.get("final_answer_rule", "last"))
    chosen = store.chosen_rows([item.run_id for item in items if item.run_id])
    grades = []
    for item in items:
        rows = chosen.get(item.run_id or "", [])
        answers = [regrade_answer(rule, row.text_to_parse(), row.reasoning, answer_type, family) for row in rows]
        final = final_answer(final_rule, answers, answer_type) if answers else None
        grades.append(
            Grades(
                [equivalent(item.gold, answer, answer_type) for answer in answers],
                item.status == "done" and equivalent(item.gold, final, answer_type),
                final_by_iteration(item.gold, answers, final_rule, answer_type),
            )
        )
    return grades


def answering_model(store: RolloutStore, items: list[EvalItemRow], requested: str) -> str:
    """The model(s) that answered the evaluation's runs, as their endpoints reported them (`RunRow.answered_by`);
    the model requested when no run has started."""
    runs = [store.get_run(item.run_id) for item in items if item.run_id]
    names = sorted({run.answered_by for run in runs if run is not None})
    return ", ".join(names) or requested


def build_report(store: RolloutStore, eval_id: str, answer_rule: str = "default") -> EvalReport:
    row = EvalStore(store).require_eval(eval_id)
    manifest = row.manifest
    params = manifest["params"]
    items = list(EvalStore(store).eval_items(eval_id))
    total = len(items)
    iterations = int(params["iterations"])
    check_rule(answer_rule)
    grades = stored_grades(items, params) if answer_rule == "default" else regraded(store, items, params, answer_rule)
    replicas, by_iteration = store.rollout_stats([item.run_id for item in items if item.run_id])
    counts = {entry["iteration"]: entry for entry in by_iteration}
    figures: list[IterationFigures] = []
    solved = [False] * total
    cumulative_tokens = 0
    for k in range(iterations):
        correct = final_correct = 0
        prompt = completion = 0
        for index, item in enumerate(items):
            graded = grades[index]
            hit = graded.correct[k] if k < len(graded.correct) else graded.final_correct and item.status == "done"
            if hit:
                correct += 1
                solved[index] = True
            if k < len(graded.final_by_iteration):
                final_correct += int(graded.final_by_iteration[k])
            else:
                final_correct += int(graded.final_correct and item.status == "done")
            prompt += item.prompt_tokens[k] if k < len(item.prompt_tokens) else 0
            completion += item.completion_tokens[k] if k < len(item.completion_tokens) else 0
        cumulative_tokens += prompt + completion
        figures.append(
            IterationFigures(
                iteration=k,
                accuracy=correct / total if total else 0.0,
                cumulative_solved=sum(solved) / total if total else 0.0,
                final_accuracy=final_correct / total if total else 0.0,
                prompt_tokens=prompt,
                completion_tokens=completion,
                cumulative_tokens=cumulative_tokens,
                **{key: int(counts.get(k, {}).get(key, 0)) for key in ROLLOUT_COUNTS},
            )
        )
    thinkers = int(params.get("thinkers", 1))
    done = sum(len(item.answers) for item in items) * thinkers
    budget = total * iterations * thinkers
    saved = sum(iterations - len(item.answers) for item in items if item.status == "done") * thinkers
    per_rollout = cumulative_tokens / done if done else 0.0
    return EvalReport(
        eval_id=eval_id,
        dataset=row.dataset,
        model=answering_model(store, items, str(params["model"])),
        strategy=str(params["strategy"]),
        status=row.status,
        problems=total,
        finished=sum(1 for item in items if item.status == "done"),
        failed=sum(1 for item in items if item.status == "failed"),
        iterations=iterations,
        final_accuracy=sum(1 for graded in grades if graded.final_correct) / total if total else 0.0,
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
    )


def plot_title(reports: list[EvalReport]) -> str:
    """Runs, models and dataset of a figure; says so when the runs are on different datasets."""
    runs = ", ".join(r.eval_id for r in reports)
    models = ", ".join(sorted({r.model for r in reports}))
    datasets = sorted({r.dataset for r in reports})
    where = datasets[0] if len(datasets) == 1 else f"DIFFERENT DATASETS: {'; '.join(datasets)}"
    return f"{runs}\nmodel {models} - {where}"


def plot_reports(reports: list[EvalReport], path: Path) -> Path:
    """Three panels, runs overlaid: accuracy against iteration (pass@1, solved at least once, the label-free
    final answer had the run stopped there), cumulative tokens against iteration, and the test-time scaling
    curve: final-answer accuracy against cumulative tokens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(17, 5.2))
    for report in reports:
        xs = [f.iteration for f in report.per_iteration]
        label = f"{report.eval_id} ({report.strategy}, {report.final_answer_rule})"
        (line,) = left.plot(xs, [100 * f.accuracy for f in report.per_iteration], marker=".", label=f"{label} pass@1")
        color = line.get_color()
        left.plot(
            xs,
            [100 * f.cumulative_solved for f in report.per_iteration],
            linestyle="--",
            color=color,
            label=f"{label} solved at least once",
        )
        left.plot(
            xs,
            [100 * f.final_accuracy for f in report.per_iteration],
            linestyle=":",
            color=color,
            label=f"{label} final answer",
        )
        middle.plot(xs, [f.cumulative_tokens for f in report.per_iteration], marker=".", color=color, label=label)
        right.plot(
            [f.cumulative_tokens for f in report.per_iteration],
            [100 * f.final_accuracy for f in report.per_iteration],
            marker=".",
            color=color,
            label=label,
        )
    for axis in (left, middle):
        axis.set_xlabel("iteration")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.set_ylabel("accuracy (%)")
    left.set_ylim(0, 100)
    middle.set_ylabel("cumulative tokens")
    right.set_xlabel("cumulative tokens")
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
