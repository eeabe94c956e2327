"""Figures of an evaluation run: per-iteration accuracy, cumulative solved share, tokens; table and plot."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from knowledge_flow.answer_rules import check_rule, regrade_answer
from knowledge_flow.answers import equivalent
from knowledge_flow.persistence.store import EvalItemRow, Store, endpoint_entry
from knowledge_flow.policies import final_answer


@dataclass(frozen=True)
class IterationFigures:
    iteration: int
    accuracy: float
    """pass@1 of rollout k: share of problems whose rollout k is correct."""
    cumulative_solved: float
    """Share of problems solved at least once in rollouts 0..k."""
    prompt_tokens: int
    completion_tokens: int
    cumulative_tokens: int


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
    """Per endpoint: rollouts, prompt and completion tokens, and failed requests (taken out of rotation)."""
    failed_rollouts: int
    """Rollouts stored as failed (no usable response after retries)."""
    truncated_rollouts: int
    """Rollouts cut off at the token limit (finish_reason length)."""
    answer_rule: str = "default"
    """How answers were read from the outputs (see `knowledge_flow.answer_rules`)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Grades:
    """One problem's grades: per iteration, and for its label-free final answer."""

    correct: list[bool]
    final_correct: bool


def stored_grades(items: list[EvalItemRow]) -> list[Grades]:
    """The grades the run recorded (its own answer parser)."""
    return [Grades(list(item.correct), bool(item.final_correct)) for item in items]


def regraded(store: Store, items: list[EvalItemRow], params: dict[str, Any], rule: str) -> list[Grades]:
    """Grades with answers read again from the stored outputs by `rule`; no request is sent."""
    answer_type = params["answer_type"]
    family = str(params.get("model_family", "instruct"))
    chosen = store.chosen_rows([item.run_id for item in items if item.run_id])
    grades = []
    for item in items:
        rows = chosen.get(item.run_id or "", [])
        answers = [regrade_answer(rule, row.text_to_parse(), row.reasoning, answer_type, family) for row in rows]
        final = final_answer(str(params.get("final_answer_rule", "last")), answers, answer_type) if answers else None
        grades.append(
            Grades(
                [equivalent(item.gold, answer, answer_type) for answer in answers],
                item.status == "done" and equivalent(item.gold, final, answer_type),
            )
        )
    return grades


def build_report(store: Store, eval_id: str, answer_rule: str = "default") -> EvalReport:
    row = store.require_eval(eval_id)
    manifest = row.manifest
    params = manifest["params"]
    items = list(store.eval_items(eval_id))
    total = len(items)
    iterations = int(params["iterations"])
    check_rule(answer_rule)
    grades = stored_grades(items) if answer_rule == "default" else regraded(store, items, params, answer_rule)
    figures: list[IterationFigures] = []
    solved = [False] * total
    cumulative_tokens = 0
    for k in range(iterations):
        correct = 0
        prompt = completion = 0
        for index, item in enumerate(items):
            graded = grades[index]
            hit = graded.correct[k] if k < len(graded.correct) else graded.final_correct and item.status == "done"
            if hit:
                correct += 1
                solved[index] = True
            prompt += item.prompt_tokens[k] if k < len(item.prompt_tokens) else 0
            completion += item.completion_tokens[k] if k < len(item.completion_tokens) else 0
        cumulative_tokens += prompt + completion
        figures.append(
            IterationFigures(
                iteration=k,
                accuracy=correct / total if total else 0.0,
                cumulative_solved=sum(solved) / total if total else 0.0,
                prompt_tokens=prompt,
                completion_tokens=completion,
                cumulative_tokens=cumulative_tokens,
            )
        )
    replicas = _replicas(store, [item.run_id for item in items if item.run_id], manifest)
    thinkers = int(params.get("thinkers", 1))
    done = sum(len(item.answers) for item in items) * thinkers
    budget = total * iterations * thinkers
    saved = sum(iterations - len(item.answers) for item in items if item.status == "done") * thinkers
    per_rollout = cumulative_tokens / done if done else 0.0
    return EvalReport(
        eval_id=eval_id,
        dataset=row.dataset,
        model=str(params["model"]),
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
        stop_policy=str(params.get("stop_policy", "fixed")),
        final_answer_rule=str(params.get("final_answer_rule", "last")),
        answer_rule=answer_rule,
    )


def _replicas(store: Store, run_ids: list[str], manifest: dict[str, Any]) -> list[dict[str, Any]]:
    failures: dict[str, int] = manifest.get("replica_failures", {})
    requests: dict[str, int] = manifest.get("replica_requests", {})
    entries = {e["url"]: e for e in store.endpoint_stats(run_ids)}
    for url in set(failures) | set(requests):
        entries.setdefault(url, endpoint_entry(url))
    for url, entry in entries.items():
        entry["requests"] = int(requests.get(url, entry["rollouts"]))
        entry["failed_requests"] = int(failures.get(url, 0))
    return sorted(entries.values(), key=lambda e: str(e["url"]))


def plot_reports(reports: list[EvalReport], path: Path) -> Path:
    """Accuracy (pass@1 and cumulative solved) and cumulative tokens against iteration, runs overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for report in reports:
        xs = [f.iteration for f in report.per_iteration]
        label = f"{report.eval_id} ({report.strategy})"
        (line,) = left.plot(xs, [100 * f.accuracy for f in report.per_iteration], marker=".", label=f"{label} pass@1")
        left.plot(
            xs,
            [100 * f.cumulative_solved for f in report.per_iteration],
            linestyle="--",
            color=line.get_color(),
            label=f"{label} solved at least once",
        )
        right.plot(xs, [f.cumulative_tokens for f in report.per_iteration], marker=".", label=label)
    left.set_xlabel("iteration")
    left.set_ylabel("accuracy (%)")
    left.set_ylim(0, 100)
    left.grid(alpha=0.3)
    left.legend(fontsize="small")
    right.set_xlabel("iteration")
    right.set_ylabel("cumulative tokens")
    right.grid(alpha=0.3)
    right.legend(fontsize="small")
    figure.suptitle(", ".join(sorted({r.dataset for r in reports})))
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
