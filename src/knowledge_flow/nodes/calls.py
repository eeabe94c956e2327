"""Sending requests from nodes: the run's endpoint (replicas, retries), sampling from the run's parameters,
and the fault rules every request follows.

Faults: connection errors, timeouts, 5xx and 429 are retried by the client (then fail over to another
replica); when those retries run out, the endpoint is down and the error stops the run, to be resumed.
A response that cannot be used (invalid JSON, no choices) is requested again up to `CONTENT_ATTEMPTS` times;
a request the server refuses as such (400, 422), or a prompt that leaves no room in the served context, is
not. Either way the request then counts as failed, with its reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import openai
from langgraph.runtime import Runtime

from knowledge_flow.context import Context
from knowledge_flow.endpoint import Completion, Prepared, PromptTooLong, Sampling, describe, prepare, send
from knowledge_flow.endpoint.replicas import FAILOVER_ERRORS, ReplicaPool, get_pool
from knowledge_flow.endpoint.served import Served
from knowledge_flow.nodes.common import context_of
from knowledge_flow.state import RunParams
from knowledge_flow.strategies import RolloutPrompt

CONTENT_ATTEMPTS = 3
CONTENT_FAULTS: tuple[type[Exception], ...] = (ValueError, TypeError, KeyError, openai.APIResponseValidationError)
REQUEST_FAULTS: tuple[type[Exception], ...] = (openai.BadRequestError, openai.UnprocessableEntityError)

T = TypeVar("T")


@dataclass
class Resends:
    """Requests sent again for one rollout: after an unusable response, or to another replica after one failed
    (the OpenAI client's own retries of a request are not counted). Stored as the rollout's ``retries``."""

    count: int = 0


@dataclass(frozen=True)
class Endpoint:
    """Where a node's requests go, and how they are retried."""

    served: Served
    pool: ReplicaPool
    timeout: float
    retries: int
    secrets: tuple[str, ...]

    def send(self, prepared: Prepared, sampling: Sampling, resends: Resends | None = None) -> list[Completion]:
        return self.pool.call(lambda url: self.on(url, lambda: self.send_to(url, prepared, sampling), resends))

    def send_to(self, url: str, prepared: Prepared, sampling: Sampling) -> list[Completion]:
        return send(self.served, prepared, sampling, url, timeout=self.timeout, max_retries=self.retries)

    @staticmethod
    def on(url: str, request: Callable[[], T], resends: Resends | None) -> T:
        """`request()` to the replica at `url`, counted in `resends` when it fails over to another."""
        try:
            return request()
        except FAILOVER_ERRORS:
            if resends is not None:
                resends.count += 1
            raise


def endpoint_of(runtime: Runtime[Context], served: Served) -> Endpoint:
    ctx = context_of(runtime)
    pool = get_pool(ctx.base_url)
    # With several replicas, fail over at once instead of retrying a dead one.
    retries = ctx.max_retries if len(pool.replicas) == 1 else min(ctx.max_retries, 1)
    return Endpoint(served, pool, ctx.request_timeout, retries, ctx.secrets)


def sampling_of(
    params: RunParams, max_tokens: int, *, logprobs: bool = False, top_logprobs: int = 0, seed_offset: int = 0
) -> Sampling:
    """The run's sampling parameters for one request (its seed: the run's plus `seed_offset`, within 31 bits).
    `top_logprobs` is DeepConf's k: k + 1 candidates are requested, so that the exact top k is among them (see
    `strategies.confidence`)."""
    seed = params.get("seed")
    return Sampling(
        model=params["model"],
        temperature=params["temperature"],
        top_p=params["top_p"],
        top_k=params["top_k"],
        min_p=params["min_p"],
        repetition_penalty=params["repetition_penalty"],
        max_tokens=max_tokens,
        logprobs=logprobs or top_logprobs > 0,
        top_logprobs=top_logprobs + 1 if top_logprobs else None,
        reasoning_effort=params["reasoning_effort"],
        extra=params.get("extra_body"),
        seed=None if seed is None else (seed + seed_offset) % 2**31,
    )


def with_faults(attempt: Callable[[], T], secrets: tuple[str, ...], resends: Resends | None = None) -> T | str:
    """`attempt()`'s result, or the reason it failed (see the module's fault rules); attempts after the first
    are counted in `resends`."""
    reason = ""
    for number in range(CONTENT_ATTEMPTS):
        if number and resends is not None:
            resends.count += 1
        try:
            return attempt()
        except REQUEST_FAULTS as exc:
            return describe(exc, secrets)
        except CONTENT_FAULTS as exc:
            reason = describe(exc, secrets)
    return reason


def request_once(
    endpoint: Endpoint, prompt: RolloutPrompt, sampling: Sampling
) -> tuple[Prepared | None, Completion | str]:
    """One completion of `prompt` (n = 1), or the reason it failed."""
    try:
        prepared = prepare(endpoint.served, prompt.messages, prompt.prefill, prompt.max_tokens)
    except PromptTooLong as exc:
        return None, str(exc)
    outcome = with_faults(lambda: endpoint.send(prepared, sampling)[0], endpoint.secrets)
    return prepared, outcome
