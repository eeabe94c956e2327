"""Continuing a run that stopped: retry its failed iterations, extend its budget.

Both are ordinary LangGraph state updates (`update_state`), written as if the node before the graph's next
step had written them, so the graph then continues from there:

- A failed run (its rollouts kept failing) is reopened: its trailing iterations whose every rollout failed
  are tried again (their failed rows are removed from the rollout store, the run's counters go back to the
  first of them); nothing that succeeded is requested again.
- A larger iteration budget extends a run, finished or not: the rollouts already stored are kept.

A run that an error in a step stopped (the endpoint down for good, say) is failed too (`mark_failed`), but
its checkpoint is that of the step before: LangGraph keeps the error with it (`step_error`), `show` and
`threads` read the status from it, and resuming runs the step again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver, CheckpointTuple
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Overwrite

from knowledge_flow.persistence.store import RolloutStore, RunRow


def predecessor(graph: CompiledStateGraph[Any, Any, Any, Any], node: str) -> str:
    """The node whose write leads to `node` (a static edge, or a router that can choose it)."""
    builder = graph.builder
    for source, target in builder.edges:
        if target == node:
            return str(source)
    for source, branches in builder.branches.items():
        for branch in branches.values():
            if branch.ends is None or node in branch.ends.values() or node in branch.ends:
                return str(source)
    raise ValueError(f"no node leads to {node!r}")


def failed_tail(store: RolloutStore, run_id: str, done: int) -> int:
    """How many of the run's last iterations had every rollout fail."""
    by_iteration: dict[int, list[bool]] = {}
    for row in store.rollouts(run_id):
        by_iteration.setdefault(row.iteration, []).append(row.error is not None)
    count = 0
    for iteration in range(done - 1, -1, -1):
        flags = by_iteration.get(iteration)
        if not flags or not all(flags):
            break
        count += 1
    return count


def reopen(
    graph: CompiledStateGraph[Any, Any, Any, Any],
    config: RunnableConfig,
    store: RolloutStore,
    *,
    iterations: int | None = None,
) -> bool:
    """Make a stopped run continue (see the module's docstring). Returns whether it has rollouts left to run.

    Raises ValueError when `iterations` is below what the run has already done.
    """
    snapshot = graph.get_state(config)
    values = snapshot.values
    params = dict(values.get("params") or {})
    if not params:
        return bool(snapshot.next)
    answers = list(values.get("answers", []))
    update: dict[str, Any] = {}
    if iterations is not None and iterations != params["iterations"]:
        if iterations < len(answers):
            raise ValueError(f"the run has done {len(answers)} iterations; --iterations {iterations} cannot shrink it")
        params["iterations"] = iterations
        update["params"] = params
    status = values.get("status")
    done = len(answers)
    if status == "failed":
        retry = failed_tail(store, values["run_id"], done)
        first = done - retry
        store.delete_rollouts(values["run_id"], from_iteration=first)
        update |= {
            "iteration": first,
            "answers": Overwrite(answers[:first]),
            "changed_with_report": Overwrite(list(values.get("changed_with_report", []))[:first]),
            "failed_streak": 0,
        }
        done = first
    if not update and status not in ("done", "failed"):
        if snapshot.next:  # a run a step's error stopped (`mark_failed`) goes on
            store.update_run(values["run_id"], status="running")
        return bool(snapshot.next)
    if status in ("done", "failed"):
        update |= {"status": "running", "final_answer": None, "stopped_early": False}
    last = predecessor(graph, snapshot.next[0]) if snapshot.next else predecessor(graph, "stop_check")
    graph.update_state(config, update, as_node=last)
    store.update_run(values["run_id"], status="running", final_answer=None, iterations_done=done)
    return done < int(params["iterations"])


#: What `kf_runs` mirrors of a thread's checkpoint: checkpoint channel -> column.
MIRRORED = {"status": "status", "iteration": "iterations_done", "final_answer": "final_answer"}
#: LangGraph's pending write of the error a step raised (kept with the checkpoint before that step).
STEP_ERROR = "__error__"


def mark_failed(store: RolloutStore, thread_id: str) -> None:
    """The thread's run, stopped by an error in a step, is failed. Its checkpoint is kept (LangGraph keeps the
    error with it, see `step_error`): `kflow resume` runs that step again. Best effort: the error may be the
    database's own."""
    with contextlib.suppress(Exception):  # the checkpoint's error says the same
        run = store.latest_run(thread_id)
        if run is not None and run.status == "running":
            store.update_run(run.run_id, status="failed")


def _step_error(found: CheckpointTuple | None) -> str | None:
    for _task, channel, value in (found.pending_writes or []) if found is not None else []:
        if channel == STEP_ERROR:
            return str(value)
    return None


def step_error(checkpointer: BaseCheckpointSaver[Any], thread_id: str) -> str | None:
    """The error that stopped the thread's latest run in a step, as LangGraph recorded it; None if none did."""
    return _step_error(checkpointer.get_tuple({"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}))


def from_checkpoints(
    store: RolloutStore, checkpointer: BaseCheckpointSaver[Any], runs: Sequence[RunRow]
) -> list[RunRow]:
    """The runs with status, iterations done and final answer as their threads' checkpoints hold them.

    The checkpoint is the source (resume continues from it); ``kf_runs`` mirrors it for listing and is written
    in the same step, so the two differ only when a process died between the two writes. A row that differs
    is corrected here, so `show`, `threads` and `resume` never disagree. Only a thread's latest run has its
    checkpoint; earlier runs keep their rows.
    """
    latest: dict[str, RunRow] = {}
    for run in runs:
        if run.thread_id not in latest or run.created_at >= latest[run.thread_id].created_at:
            latest[run.thread_id] = run
    for run in latest.values():
        found = checkpointer.get_tuple({"configurable": {"thread_id": run.thread_id, "checkpoint_ns": ""}})
        values = found.checkpoint["channel_values"] if found is not None else {}
        if values.get("run_id") != run.run_id:
            continue
        if values.get("status") == "running" and _step_error(found) is not None:
            values = {**values, "status": "failed"}  # stopped by a step's error (`mark_failed`)
        changed = {
            column: values[channel]
            for channel, column in MIRRORED.items()
            if channel in values and values[channel] != getattr(run, column)
        }
        if changed:
            store.update_run(run.run_id, **changed)
            for column, value in changed.items():
                setattr(run, column, value)
    return list(runs)
