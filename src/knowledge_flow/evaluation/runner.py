"""Run a whole benchmark: one LangGraph thread per problem, all progressing independently.

There is no barrier per iteration: each problem runs its rollouts back to back in its own worker, so problem
A can be at rollout 10 while B is at rollout 3, and a server's continuous batching always has work. At most
`concurrency` problems are in flight. Rollouts are graded in the main thread (math-verify's timeouts need it)
as problems finish. Resuming continues every unfinished thread from its last checkpoint; completed rollouts
are read back from the rollout store, never requested again.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, cast

from langchain_core.runnables import RunnableConfig
from langgraph.graph.state import CompiledStateGraph

from knowledge_flow.context import Context
from knowledge_flow.endpoint import describe
from knowledge_flow.evaluation.rows import EvalItemRow, EvalStore
from knowledge_flow.params import recursion_limit
from knowledge_flow.persistence.store import RolloutStore, utcnow
from knowledge_flow.runs import mark_failed, reopen
from knowledge_flow.state import AnswerType, OutputState, State
from knowledge_flow.text.answers import equivalent

Graph = CompiledStateGraph[State, Context, Any, OutputState]


@dataclass
class Progress:
    """Counters shared by the workers (under a lock) and read by the display."""

    problems: int
    rollouts_total: int
    problems_done: int = 0
    rollouts_done: int = 0
    rollouts_failed: int = 0
    tokens: int = 0
    correct_final: int = 0
    graded: int = 0
    failed: int = 0
    started: float = field(default_factory=time.monotonic)
    rollouts_at_start: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_rollout(self, tokens: int, failed: int = 0) -> None:
        with self.lock:
            self.rollouts_done += 1
            self.rollouts_failed += failed
            self.tokens += tokens

    @property
    def accuracy(self) -> float | None:
        return self.correct_final / self.graded if self.graded else None

    def line(self) -> str:
        """One plain line of progress, for logs that are not a terminal (batch jobs, nohup, Slurm)."""
        elapsed = time.monotonic() - self.started
        new = self.rollouts_done - self.rollouts_at_start
        rate = new / elapsed * 60 if elapsed > 0 else 0.0
        left = self.rollouts_total - self.rollouts_done
        eta = f"{int(left / rate * 60 // 3600)}:{int(left / rate * 60 % 3600 // 60):02d}" if rate > 0 else "?"
        accuracy = f", final-answer accuracy {100 * self.accuracy:.1f}%" if self.accuracy is not None else ""
        return (
            f"progress: problems {self.problems_done}/{self.problems} done ({self.failed} failed), "
            f"rollouts {self.rollouts_done}/{self.rollouts_total} ({self.rollouts_failed} failed), "
            f"tokens {self.tokens:,}, {rate:.1f} rollouts/min, elapsed {int(elapsed // 60)} min, ETA {eta} h"
            f"{accuracy}"
        )


@dataclass(frozen=True)
class ItemResult:
    position: int
    values: dict[str, Any] | None
    error: str | None


def thread_id_for(eval_id: str, position: int) -> str:
    return f"{eval_id}:{position}"


INTERRUPTED = "interrupted"


def _solve_one(
    graph: Graph,
    store: RolloutStore,
    item: EvalItemRow,
    params: dict[str, Any],
    context: Context,
    progress: Progress,
    stop: threading.Event,
) -> ItemResult:
    if stop.is_set():
        return ItemResult(item.position, None, INTERRUPTED)
    config: RunnableConfig = {
        "configurable": {"thread_id": item.thread_id},
        "recursion_limit": recursion_limit(int(params["iterations"])),
    }
    snapshot = graph.get_state(config)
    if snapshot.values.get("status") == "failed" and not snapshot.next:
        reopen(graph, config, store)  # resumed: its failed iterations are tried again
        snapshot = graph.get_state(config)
    if snapshot.values.get("status") == "done" and not snapshot.next:
        return ItemResult(item.position, dict(snapshot.values), None)
    graph_input: dict[str, Any] | None = None
    if not snapshot.values and not snapshot.next:
        graph_input = {"problem": item.problem, **params}
    seen = int((snapshot.values.get("usage") or {}).get("prompt_tokens", 0)) + int(
        (snapshot.values.get("usage") or {}).get("completion_tokens", 0)
    )
    failed = 0
    try:
        for update in graph.stream(graph_input, config, context=context, stream_mode="updates", durability="sync"):
            if not isinstance(update, dict):
                continue
            extracted = update.get("extract_answer")
            if extracted:
                failed = sum(1 for c in extracted.get("candidates", []) if c.get("error"))
            distilled = update.get("distill_knowledge")
            if distilled:
                usage = distilled["usage"]
                total = int(usage["prompt_tokens"]) + int(usage["completion_tokens"])
                progress.add_rollout(total - seen, failed)
                seen = total
            if stop.is_set():  # stop between steps: what is stored is kept, the rest runs on resume
                return ItemResult(item.position, None, INTERRUPTED)
    except Exception as exc:  # the problem failed (its run too: resume continues it)
        mark_failed(store, item.thread_id)
        return ItemResult(item.position, None, describe(exc, context.secrets))
    return ItemResult(item.position, dict(graph.get_state(config).values), None)


def grade_item(
    store: RolloutStore, eval_id: str, item: EvalItemRow, values: dict[str, Any], answer_type: AnswerType
) -> bool | None:
    """Grade every rollout of a finished problem against its gold answer and record it."""
    answers: list[str | None] = list(values.get("answers", []))
    correct = [equivalent(item.gold, answer, answer_type) for answer in answers]
    prompt_tokens = [0] * len(answers)
    completion_tokens = [0] * len(answers)
    for row in store.rollouts(values["run_id"]):
        if row.iteration < len(answers):
            prompt_tokens[row.iteration] += row.prompt_tokens
            completion_tokens[row.iteration] += row.completion_tokens
    final = values.get("final_answer")
    final_correct = equivalent(item.gold, final, answer_type)
    EvalStore(store).update_eval_item(
        eval_id,
        item.position,
        status="done",
        error=None,
        run_id=values["run_id"],
        final_answer=final,
        final_correct=final_correct,
        answers_json=_dumps(answers),
        correct_json=_dumps(correct),
        prompt_tokens_json=_dumps(prompt_tokens),
        completion_tokens_json=_dumps(completion_tokens),
    )
    return final_correct


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def run_items(
    *,
    graph: Graph,
    store: RolloutStore,
    eval_id: str,
    items: Sequence[EvalItemRow],
    params: dict[str, Any],
    context: Context,
    concurrency: int,
    progress: Progress,
    stop: threading.Event,
    on_tick: Callable[[], None] = lambda: None,
) -> list[ItemResult]:
    """Run every item not yet done, at most `concurrency` at once; returns the results of those run.

    When `stop` is set, no new problem starts and the workers stop after their current step; the ones still
    waiting for a response are not waited for (the caller ends the process: their responses were never
    stored, so a resume sends those requests again).
    """
    pending = [item for item in items if item.status != "done"]
    answer_type = cast(AnswerType, params["answer_type"])
    results: list[ItemResult] = []
    by_position = {item.position: item for item in pending}
    pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="kflow-eval")
    futures: set[Future[ItemResult]] = {
        pool.submit(_solve_one, graph, store, item, params, context, progress, stop) for item in pending
    }
    try:
        while futures:
            done, futures = wait(futures, timeout=0.25, return_when=FIRST_COMPLETED)
            for future in done:
                if future.cancelled():
                    continue
                result = future.result()
                results.append(result)
                record(store, eval_id, by_position[result.position], result, answer_type, progress)
            on_tick()
            if stop.is_set():
                for future in futures:
                    future.cancel()
                break
    finally:
        pool.shutdown(wait=not stop.is_set(), cancel_futures=True)
    EvalStore(store).update_eval(eval_id, updated_at=utcnow())
    return results


def record(
    store: RolloutStore,
    eval_id: str,
    item: EvalItemRow,
    result: ItemResult,
    answer_type: AnswerType,
    progress: Progress,
) -> None:
    """Grade a finished problem, or record why it did not finish (an interrupted one stays pending)."""
    values = result.values
    if values is not None and values.get("status") == "done":
        final_correct = grade_item(store, eval_id, item, values, answer_type)
        with progress.lock:
            progress.problems_done += 1
            progress.graded += 1
            progress.correct_final += int(bool(final_correct))
        return
    if result.error == INTERRUPTED:
        return
    error = result.error or "its rollouts kept failing (see `kflow show` of its thread for the reasons)"
    EvalStore(store).update_eval_item(eval_id, item.position, status="failed", error=error)
    with progress.lock:
        progress.failed += 1
