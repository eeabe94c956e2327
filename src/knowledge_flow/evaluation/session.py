"""Create and resume evaluation runs: the manifest, the per-problem rows, and the run itself."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from knowledge_flow.context import Context
from knowledge_flow.endpoint.urls import shown_url
from knowledge_flow.evaluation.datasets import LoadedDataset, load_problems
from knowledge_flow.evaluation.predictions import write_predictions
from knowledge_flow.evaluation.rows import EvalItemRow, EvalRow, EvalStore
from knowledge_flow.evaluation.runner import Graph, ItemResult, Progress, run_items, thread_id_for
from knowledge_flow.persistence.store import RolloutStore, utcnow
from knowledge_flow.records import AnswerType
from knowledge_flow.runs import reopen
from knowledge_flow.version import package_version


@dataclass(frozen=True)
class DatasetSpec:
    """How to load the dataset again on resume."""

    source: str
    problem_field: str | None = None
    answer_field: str | None = None
    id_field: str | None = None
    answer_type: AnswerType | None = None
    limit: int | None = None

    def load(self) -> LoadedDataset:
        return load_problems(
            self.source,
            problem_field=self.problem_field,
            answer_field=self.answer_field,
            id_field=self.id_field,
            answer_type=self.answer_type,
            limit=self.limit,
        )


def manifest_json(manifest: dict[str, Any]) -> str:
    return json.dumps(manifest, ensure_ascii=False, sort_keys=True)


def new_eval_id() -> str:
    return f"eval-{utcnow()[:10]}-{uuid.uuid4().hex[:8]}"


def create_eval(
    store: RolloutStore,
    *,
    eval_id: str,
    spec: DatasetSpec,
    dataset: LoadedDataset,
    params: dict[str, Any],
    base_url: str,
    concurrency: int,
    output_postfix: str,
    output_dir: str,
) -> EvalRow:
    now = utcnow()
    manifest = {
        "eval_id": eval_id,
        "dataset": dataset.name,
        "dataset_spec": {**spec.__dict__},
        "dataset_hash": dataset.content_hash,
        "problems": len(dataset.problems),
        "answer_type": dataset.answer_type,
        "model": params["model"],
        "endpoint": shown_url(base_url),
        "strategy": params["strategy"],
        "prompt_set": params["prompt_set"],
        "prompt_hash": params["prompt_hash"],
        "package_version": package_version(),
        "params": params,
        "concurrency": concurrency,
        "output_postfix": output_postfix,
        "output_dir": output_dir,
        "started_at": now,
        "finished_at": None,
    }
    row = EvalRow(
        eval_id=eval_id,
        created_at=now,
        updated_at=now,
        finished_at=None,
        status="running",
        dataset=dataset.name,
        dataset_hash=dataset.content_hash,
        manifest_json=manifest_json(manifest),
    )
    items = [
        EvalItemRow(
            eval_id=eval_id,
            position=position,
            problem_id=problem.id,
            thread_id=thread_id_for(eval_id, position),
            problem=problem.problem,
            gold=problem.gold,
            status="pending",
        )
        for position, problem in enumerate(dataset.problems)
    ]
    EvalStore(store).create_eval(row, items)
    return row


def extend(graph: Graph, store: RolloutStore, eval_id: str, iterations: int) -> int:
    """Raise an evaluation's iteration budget to `iterations`: every problem's run continues from where it
    stopped, nothing stored is requested again; the change is recorded in the manifest. Returns the old
    budget. ValueError when `iterations` is smaller."""
    row = EvalStore(store).require_eval(eval_id)
    manifest = row.manifest
    before = int(manifest["params"]["iterations"])
    if iterations < before:
        raise ValueError(
            f"run {eval_id!r} has a budget of {before} iterations; --iterations {iterations} cannot shrink it"
        )
    if iterations == before:
        return before
    for item in EvalStore(store).eval_items(eval_id):
        config: Any = {"configurable": {"thread_id": item.thread_id}}
        if graph.get_state(config).values:
            reopen(graph, config, store, iterations=iterations)
        if item.status == "done":
            EvalStore(store).update_eval_item(eval_id, item.position, status="pending")
    manifest["params"]["iterations"] = iterations
    manifest.setdefault("extensions", []).append({"at": utcnow(), "from": before, "to": iterations})
    manifest["finished_at"] = None
    EvalStore(store).update_eval(eval_id, manifest_json=manifest_json(manifest), status="running")
    return before


def execute(
    *,
    graph: Graph,
    store: RolloutStore,
    eval_id: str,
    context: Context,
    concurrency: int,
    stop: threading.Event,
    on_start: Callable[[Progress], None] = lambda _p: None,
    on_tick: Callable[[], None] = lambda: None,
) -> tuple[EvalRow, list[ItemResult], list[Path]]:
    """Run (or continue) an evaluation; write the prediction files once every problem is done (when `stop`
    was set or problems failed, for the problems complete so far)."""
    row = EvalStore(store).require_eval(eval_id)
    manifest = row.manifest
    params = manifest["params"]
    items = EvalStore(store).eval_items(eval_id)
    iterations = int(params["iterations"])
    progress = Progress(problems=len(items), rollouts_total=len(items) * iterations)
    runs = EvalStore(store).item_runs(items)
    for item in items:
        if item.status == "done":
            progress.problems_done += 1
            progress.rollouts_done += len(item.answers)
            progress.graded += 1
            progress.correct_final += int(bool(item.final_correct))
            progress.tokens += sum(item.prompt_tokens) + sum(item.completion_tokens)
        elif item.position in runs:  # stopped mid-way: its stored iterations count
            run = store.get_run(runs[item.position])
            progress.rollouts_done += run.iterations_done if run is not None else 0
    progress.rollouts_at_start = progress.rollouts_done
    EvalStore(store).update_eval(eval_id, status="running")
    on_start(progress)
    results = run_items(
        graph=graph,
        store=store,
        eval_id=eval_id,
        items=items,
        params=params,
        context=context,
        concurrency=concurrency,
        progress=progress,
        stop=stop,
        on_tick=on_tick,
    )
    row = EvalStore(store).get_eval(eval_id) or row
    manifest = row.manifest
    items = EvalStore(store).eval_items(eval_id)
    written: list[Path] = []
    if all(item.status == "done" for item in items):
        finished = utcnow()
        manifest["finished_at"] = finished
        EvalStore(store).update_eval(
            eval_id,
            status="done",
            finished_at=finished,
            manifest_json=manifest_json(manifest),
        )
        row = EvalStore(store).get_eval(eval_id) or row
        written = write_predictions(store, row, Path(manifest["output_dir"]))
    else:  # stopped, or problems failed: the files hold the problems that finished
        EvalStore(store).update_eval(eval_id, status="interrupted" if stop.is_set() else "incomplete")
        if any(item.status == "done" for item in items):
            written = write_predictions(
                store, EvalStore(store).get_eval(eval_id) or row, Path(manifest["output_dir"]), done_only=True
            )
    return EvalStore(store).get_eval(eval_id) or row, results, written
