"""`solve`: one rollout. The full prompt and output go to the rollout store; the state gets the id."""

from __future__ import annotations

import json
from typing import Any

from langgraph.runtime import Runtime

from knowledge_flow import llm
from knowledge_flow.context import Context
from knowledge_flow.nodes.common import context_of, store_of
from knowledge_flow.persistence.store import RolloutRow, utcnow
from knowledge_flow.state import State
from knowledge_flow.strategies import get_strategy


def rollout_id(run_id: str, iteration: int, index: int = 0) -> str:
    return f"{run_id}:{iteration}:{index}"


def solve(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    params = state["params"]
    iteration = state.get("iteration", 0)
    rid = rollout_id(state["run_id"], iteration)
    store = store_of(runtime)
    if store.get_rollout(rid) is None:  # after a crash, a response already received is reused
        ctx = context_of(runtime)
        messages = get_strategy(params["strategy"]).build_messages(state)
        client = llm.chat_model(
            ctx.base_url,
            ctx.api_key,
            llm.Sampling(params["model"], params["temperature"], params["top_p"], params["max_new_tokens"]),
            timeout=ctx.request_timeout,
            max_retries=ctx.max_retries,
        )
        prefilled = messages[-1]["role"] == "assistant"
        completion = llm.complete(client, messages, continue_final_message=prefilled)
        content = completion.content
        if prefilled:
            content = messages[-1]["content"] + content
        store.add_rollout(
            RolloutRow(
                id=rid,
                run_id=state["run_id"],
                thread_id=state["thread_id"],
                iteration=iteration,
                index=0,
                created_at=utcnow(),
                prompt_json=json.dumps(messages, ensure_ascii=False),
                content=content,
                reasoning=completion.reasoning,
                finish_reason=completion.finish_reason,
                prompt_tokens=completion.prompt_tokens,
                completion_tokens=completion.completion_tokens,
                latency_s=completion.latency_s,
            )
        )
    return {"pending_rollout": rid}
