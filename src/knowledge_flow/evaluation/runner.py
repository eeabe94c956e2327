"""Run a whole benchmark: one LangGraph thread per problem, all progressing independently.

There is no barrier per iteration: each problem runs its rollouts back to back in its own thread, so problem
A can be at rollout 10 while B is at rollout 3, and a server's continuous batching always has work. At most
`concurrency` problems are in flight. Problems are claimed from the database as threads free up
(`knowledge_flow.evaluation.claims`), so several processes (workers) can share one evaluation. Rollouts are
graded in the main thread (math-verify's timeouts need it) as problems finish. Resuming continues every
unfinished thread from its last checkpoint; completed rollouts are read back from the rollout store, never
requested again.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, cast

from langchain_core.runnables import RunnableConfig
from langgraph.graph.state import CompiledStateGraph

from knowledge_flow.context import Context
from knowledge_flow.endpoint import describe
from knowledge_flow.evaluation.claims import claim, claimed_elsewhere, release
from knowledge_flow.evaluation.rows import EvalItemRow, EvalStore
from knowledge_flow.params import recursion_limit
from knowledge_flow.persistence.leases import BEATS_PER_TIMEOUT, Lease, worker_name
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
    worker: str = ""
    """This process, when it shares the evaluation with other workers."""
    finished_here: int = 0
    in_flight: int = 0
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
        here = f" of worker {self.worker} ({self.finished_here} finished here, {self.in_flight} running)"
        return (
            f"progress{here if self.worker else ''}: problems {self.problems_done}/{self.problems} done "
            f"({self.failed} failed), "
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
    """Grade every rollout of a finished problem against its gold answer and record it, with the tokens of each
    iteration."""
    answers: list[str | None] = list(values.get("answers", []))
    correct = [equivalent(item.gold, answer, answer_type) for answer in answers]
    prompt_tokens = [0] * len(answers)
    completion_tokens = [0] * len(answers)
    # rollouts, and calls outside them (planning, reflection, verifier, manager, GenSelect) in the iteration
    # they belong to: every token the run paid for
    paid = [(r.iteration, r.prompt_tokens, r.completion_tokens) for r in store.rollouts(values["run_id"])]
    paid += [(c.iteration, c.prompt_tokens, c.completion_tokens) for c in store.calls(values["run_id"])]
    for iteration, prompt, completion in paid:
        if iteration < len(answers):
            prompt_tokens[iteration] += prompt
            completion_tokens[iteration] += completion
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
        worker=worker_name(),
    )
    return final_correct


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def run_items(
    *,
    graph: Graph,
    store: RolloutStore,
    eval_id: str,
    params: dict[str, Any],
    context: Context,
    concurrency: int,
    progress: Progress,
    stop: threading.Event,
    lease: Lease,
    max_problems: int | None = None,
    on_tick: Callable[[], None] = lambda: None,
) -> list[ItemResult]:
    """Claim problems not yet done and run them, at most `concurrency` at once, until none is left to claim or
    `max_problems` were claimed; returns the results of those run. While other live workers hold problems this
    worker could take over, it waits (and takes them over if those workers die).

    When `stop` is set, no new problem starts and the threads stop after their current step; the ones still
    waiting for a response are not waited for (the caller ends the process: their responses were never
    stored, so a resume sends those requests again).
    """
    answer_type = cast(AnswerType, params["answer_type"])
    results: list[ItemResult] = []
    running: dict[Future[ItemResult], EvalItemRow] = {}
    failed_here: set[int] = set()  # not claimed again by this worker
    claimed = 0
    poll = min(1.0, lease.timeout / BEATS_PER_TIMEOUT)
    refreshed = time.monotonic()
    pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="kflow-eval")
    try:
        while True:
            room = concurrency - len(running)
            if max_problems is not None:
                room = min(room, max_problems - claimed)
            if room > 0 and not stop.is_set():
                for item in claim(store, eval_id, lease, room, failed_here):
                    running[pool.submit(_solve_one, graph, store, item, params, context, progress, stop)] = item
                    claimed += 1
            progress.in_flight = len(running)
            if not running:
                limited = max_problems is not None and claimed >= max_problems
                if stop.is_set() or limited or not claimed_elsewhere(store, eval_id, lease, failed_here):
                    break
                stop.wait(poll)  # other workers hold the rest: take it over if they die
                refresh(store, eval_id, progress)
                on_tick()
                continue
            done, _ = wait(running, timeout=0.25, return_when=FIRST_COMPLETED)
            for future in done:
                item = running.pop(future)
                if future.cancelled():
                    continue
                result = future.result()
                results.append(result)
                if not record(store, eval_id, item, result, answer_type, progress):
                    failed_here.add(item.position)
                release(store, eval_id, [item.position], lease)
            if time.monotonic() - refreshed >= REFRESH_S:
                refresh(store, eval_id, progress)
                refreshed = time.monotonic()
            on_tick()
            if stop.is_set():
                for future in running:
                    future.cancel()
                break
    finally:
        pool.shutdown(wait=not stop.is_set(), cancel_futures=True)
    EvalStore(store).update_eval(eval_id, updated_at=utcnow())
    return results


#: Seconds between reads of what every worker has done (for the progress display).
REFRESH_S = 10.0


def refresh(store: RolloutStore, eval_id: str, progress: Progress) -> None:
    """The evaluation's counts as every worker has advanced them."""
    counts = EvalStore(store).counts(eval_id)
    with progress.lock:
        progress.problems_done = counts.done
        progress.graded = counts.done
        progress.correct_final = counts.correct
        progress.failed = counts.failed
        progress.rollouts_done = max(progress.rollouts_done, counts.rollouts)


def record(
    store: RolloutStore,
    eval_id: str,
    item: EvalItemRow,
    result: ItemResult,
    answer_type: AnswerType,
    progress: Progress,
) -> bool:
    """Grade a finished problem, or record why it did not finish (an interrupted one stays pending); False
    when it failed."""
    values = result.values
    if values is not None and values.get("status") == "done":
        final_correct = grade_item(store, eval_id, item, values, answer_type)
        with progress.lock:
            progress.problems_done += 1
            progress.finished_here += 1
            progress.graded += 1
            progress.correct_final += int(bool(final_correct))
        return True
    if result.error == INTERRUPTED:
        return True
    error = result.error or "its rollouts kept failing (see `kflow show` of its thread for the reasons)"
    EvalStore(store).update_eval_item(eval_id, item.position, status="failed", error=error, worker=worker_name())
    with progress.lock:
        progress.failed += 1
    return False
