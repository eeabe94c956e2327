"""`solve`: the rollouts of one iteration (one per thinker). Full prompts and outputs go to the rollout
store; the state gets their ids. After a crash, rollouts already stored are reused, never requested again."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from langgraph.runtime import Runtime

from knowledge_flow import llm
from knowledge_flow.context import Context
from knowledge_flow.nodes.common import context_of, store_of
from knowledge_flow.persistence.store import RolloutRow, utcnow
from knowledge_flow.replicas import get_pool
from knowledge_flow.state import State
from knowledge_flow.strategies import get_strategy
from knowledge_flow.thinkers import spread


def rollout_id(run_id: str, iteration: int, index: int = 0) -> str:
    return f"{run_id}:{iteration}:{index}"


def solve(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    params = state["params"]
    iteration = state.get("iteration", 0)
    store = store_of(runtime)
    low, high = state.get("temperature_range") or [params["min_temperature"], params["max_temperature"]]
    temperatures = spread(low, high, params["thinkers"])
    ids = [rollout_id(state["run_id"], iteration, index) for index in range(len(temperatures))]
    missing = [index for index, rid in enumerate(ids) if store.get_rollout(rid) is None]
    if missing:
        ctx = context_of(runtime)
        strategy = get_strategy(params["strategy"])
        messages = strategy.build_messages(state, store)
        sampling = llm.Sampling(
            model=params["model"],
            temperature=params["temperature"],
            top_p=params["top_p"],
            max_tokens=strategy.max_tokens(params),
            logprobs=params["thinkers"] > 1,
            reasoning_effort=params["reasoning_effort"],
        )
        pool = get_pool(ctx.base_url)
        # With several replicas, fail over at once instead of retrying a dead one.
        retries = ctx.max_retries if len(pool.replicas) == 1 else min(ctx.max_retries, 1)
        prefilled = messages[-1]["role"] == "assistant"

        def send(s: llm.Sampling) -> list[llm.Completion]:
            def on(url: str) -> list[llm.Completion]:
                client = llm.chat_model(url, ctx.api_key, s, timeout=ctx.request_timeout, max_retries=retries)
                answers = llm.complete(client, messages, continue_final_message=prefilled)
                return [replace(c, endpoint=url) for c in answers]

            return pool.call(on)

        completions = llm.sample(send, sampling, [temperatures[index] for index in missing])
        prompt_json = json.dumps(messages, ensure_ascii=False)
        for index, completion in zip(missing, completions, strict=True):
            store.add_rollout(
                RolloutRow(
                    id=ids[index],
                    run_id=state["run_id"],
                    thread_id=state["thread_id"],
                    iteration=iteration,
                    index=index,
                    created_at=utcnow(),
                    prompt_json=prompt_json,
                    content=completion.content,
                    reasoning=completion.reasoning,
                    finish_reason=completion.finish_reason,
                    prompt_tokens=completion.prompt_tokens,
                    completion_tokens=completion.completion_tokens,
                    latency_s=completion.latency_s,
                    temperature=completion.temperature,
                    confidence=completion.confidence,
                    endpoint=completion.endpoint,
                )
            )
    return {"pending_rollouts": ids}
