"""`solve`: the rollouts of one iteration (one per thinker). Full prompts and outputs go to the rollout
store; the state gets their ids. After a crash, rollouts already stored are reused, never requested again.

The strategy builds the prompt; the endpoint layer counts its tokens with the served tokenizer, fits the
generation budget to the served context and picks the request path (see `knowledge_flow.endpoint.requests`).

Faults: connection errors, timeouts, 5xx and 429 are retried by the client (then fail over to another
replica); when those retries run out, the endpoint is down and the error stops the run, to be resumed.
A response that cannot be used (invalid JSON, no choices) is requested again up to `CONTENT_ATTEMPTS` times;
a request the server refuses as such (400, 422), or a prompt that leaves no room in the served context, is
not. Either way the rollout is then stored as failed, with its reason, and the run goes on: a failed rollout
has no answer, so it changes neither the knowledge nor the reference (`stop_check` ends a run whose rollouts
keep failing).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import openai
from langgraph.runtime import Runtime

from knowledge_flow.context import Context
from knowledge_flow.endpoint import Completion, Prepared, PromptTooLong, Sampling, describe, prepare, sample, send
from knowledge_flow.endpoint.client import endpoint_errors
from knowledge_flow.endpoint.replicas import FAILOVER_ERRORS, get_pool
from knowledge_flow.nodes.common import context_of, step_of, store_of
from knowledge_flow.persistence.store import RolloutRow, utcnow
from knowledge_flow.state import State
from knowledge_flow.thinkers import spread

CONTENT_ATTEMPTS = 3
CONTENT_FAULTS: tuple[type[Exception], ...] = (ValueError, TypeError, KeyError, openai.APIResponseValidationError)
REQUEST_FAULTS: tuple[type[Exception], ...] = (openai.BadRequestError, openai.UnprocessableEntityError)


def rollout_id(run_id: str, iteration: int, index: int = 0) -> str:
    return f"{run_id}:{iteration}:{index}"


def sample_or_fault(
    send_one: Callable[[Sampling], list[Completion]],
    sampling: Sampling,
    temperatures: list[float],
    secrets: tuple[str, ...],
) -> tuple[list[Completion] | str, int]:
    """The completions, or the reason the rollouts failed; and how many rounds of requests it took."""
    reason = ""
    for attempt in range(1, CONTENT_ATTEMPTS + 1):
        try:
            return sample(send_one, sampling, temperatures), attempt
        except REQUEST_FAULTS as exc:
            return describe(exc, secrets), attempt
        except CONTENT_FAULTS as exc:
            reason = describe(exc, secrets)
    return reason, CONTENT_ATTEMPTS


def solve(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    with endpoint_errors((context_of(runtime).api_key,)):
        return _solve(state, runtime)


def _solve(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    params = state["params"]
    iteration = state.get("iteration", 0)
    store = store_of(runtime)
    low, high = state["temperature_range"]  # set by `prepare`, adapted by `distill_knowledge`
    temperatures = spread(low, high, params["thinkers"])
    ids = [rollout_id(state["run_id"], iteration, index) for index in range(len(temperatures))]
    stored = store.stored_rollouts(ids)
    missing = [index for index, rid in enumerate(ids) if rid not in stored]
    if not missing:
        return {"pending_rollouts": ids}
    ctx = context_of(runtime)
    strategy, step, served = step_of(state, runtime)
    if iteration == 0:
        store.update_run(state["run_id"], served_json=json.dumps(served.info().as_dict()))
    prompt = strategy.build_prompt(step)
    sampling = Sampling(
        model=params["model"],
        temperature=params["temperature"],
        top_p=params["top_p"],
        top_k=params["top_k"],
        min_p=params["min_p"],
        repetition_penalty=params["repetition_penalty"],
        max_tokens=prompt.max_tokens,
        logprobs=params["thinkers"] > 1,
        reasoning_effort=params["reasoning_effort"],
        extra=params.get("extra_body"),
    )
    pool = get_pool(ctx.base_url)
    # With several replicas, fail over at once instead of retrying a dead one.
    retries = ctx.max_retries if len(pool.replicas) == 1 else min(ctx.max_retries, 1)
    secrets = (ctx.api_key,)
    prepared: Prepared | None = None
    counted: int | None = None
    try:
        prepared = prepare(served, prompt.messages, prompt.prefill, prompt.max_tokens)
        counted = prepared.prompt_tokens
    except PromptTooLong as exc:
        outcome: list[Completion] | str = str(exc)
        counted = exc.prompt_tokens
    resent = 0
    if prepared is not None:
        ready = prepared

        def on(url: str, s: Sampling) -> list[Completion]:
            nonlocal resent
            try:
                return send(served, ready, s, url, timeout=ctx.request_timeout, max_retries=retries)
            except FAILOVER_ERRORS:
                resent += 1  # another replica gets it (when there is one)
                raise

        def send_one(s: Sampling) -> list[Completion]:
            return pool.call(lambda url: on(url, s))

        outcome, rounds = sample_or_fault(send_one, sampling, [temperatures[index] for index in missing], secrets)
        resent += rounds - 1
    error = outcome if isinstance(outcome, str) else None
    completions = (
        outcome
        if not isinstance(outcome, str)
        else [Completion("", None, "error", 0, 0, 0.0, temperature=temperatures[index]) for index in missing]
    )
    prompt_json = json.dumps(prompt.messages, ensure_ascii=False)
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
                prefill=prompt.prefill,
                request_path=prepared.path if prepared is not None else None,
                max_tokens_requested=prompt.max_tokens,
                max_tokens_sent=prepared.max_tokens if prepared is not None else None,
                prompt_tokens_counted=counted,
                content=completion.content,
                reasoning=completion.reasoning,
                finish_reason=completion.finish_reason,
                prompt_tokens=completion.prompt_tokens,
                completion_tokens=completion.completion_tokens,
                latency_s=completion.latency_s,
                temperature=completion.temperature,
                confidence=completion.confidence,
                endpoint=completion.endpoint,
                error=error,
                retries=resent,
            )
        )
    return {"pending_rollouts": ids}
