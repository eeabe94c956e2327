"""GenSelect's calls as graph steps (`strategies.genselect`): `genselect` (after `extract_answer`, select rule
``genselect``: one call picks the iteration's answer among its candidates when they disagree) and
`select_final` (after `stop_check`, final-answer rule ``genselect``: one call picks the run's final answer
among its pool of traces when they disagree).

Both calls are stored (``kf_calls``) before they are used and read back after a crash, like every call of
`knowledge_flow.nodes.reflect`; a failed call or a reply without a valid choice leaves the answer to the vote.
"""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from knowledge_flow.context import Context
from knowledge_flow.nodes.common import guarded, step_of, store_of
from knowledge_flow.nodes.reflect import applied, call_id, chosen_by_call, reply_text, stored_call
from knowledge_flow.state import State, TraceVote
from knowledge_flow.strategies import get_strategy
from knowledge_flow.strategies.genselect import FINAL, SELECT, SPEC, final_pool, genselect_prompt
from knowledge_flow.strategies.selection import candidate_views, choice_in, stored_views

__all__ = ["genselect", "pool_of", "select_final"]


@guarded
def genselect(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """The select rule's call over the iteration's candidates; its verdict goes to `distill_knowledge`."""
    table = store_of(runtime).prompt_set(state["params"]["prompt_hash"]).table(SPEC)
    iteration = state.get("iteration", 0)
    return chosen_by_call(
        state,
        runtime,
        SELECT,
        lambda step, candidates: genselect_prompt(table, state, candidate_views(candidates, step.history), iteration),
    )


def pool_of(state: State) -> list[TraceVote]:
    """The traces the final answer's call chooses among (`strategies.genselect.final_pool`)."""
    params = state["params"]
    return final_pool(state.get("traces", []), get_strategy(params["strategy"]).final_pool, params["answer_type"])


@guarded
def select_final(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """The final-answer rule's call over the pool's traces; the answer of the trace it names becomes the final
    answer (the pool's plurality, which `stop_check` set, stands when it names none)."""
    store = store_of(runtime)
    pool = pool_of(state)
    last = state.get("iteration", 1) - 1
    row = store.get_call(call_id(state["run_id"], last, FINAL))
    if row is None:
        _, step, served = step_of(state, runtime)
        table = store.prompt_set(state["params"]["prompt_hash"]).table(SPEC)
        views = stored_views(step.history, [trace["rollout_id"] for trace in pool])
        row = stored_call(state, runtime, served, FINAL, genselect_prompt(table, state, views, last), last)
    text = reply_text(row)
    number = choice_in(text, len(pool)) if text is not None else None
    chosen = pool[number - 1] if number is not None else None
    error = row.error or (None if chosen is not None else "no valid selected_solution_id in the reply")
    final = chosen["answer"] if chosen is not None else state.get("final_answer")
    outcome = {
        "selected_solution_id": number,
        "rollout_id": chosen["rollout_id"] if chosen is not None else None,
        "answer": final,
        "error": error,
    }
    store.update_run(state["run_id"], final_answer=final)
    return applied(state, runtime, row, {"final_answer": final}, outcome)
