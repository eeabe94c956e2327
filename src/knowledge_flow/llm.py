"""The OpenAI-compatible endpoint, through langchain-openai.

`ChatOpenAI` (1.x) drops the `reasoning_content` / `reasoning` field that vLLM's reasoning parsers add to
each message; :class:`ReasoningChatOpenAI` keeps it in ``additional_kwargs["reasoning_content"]``.
Retries (429 with Retry-After, 5xx, timeouts, lost connections) are the OpenAI SDK's, with exponential
backoff; other 4xx errors (a prompt longer than the context, say) are not retried.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import openai
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, convert_to_messages
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_openai import ChatOpenAI

Message = Mapping[str, str]


class ReasoningChatOpenAI(ChatOpenAI):
    """`ChatOpenAI` that keeps the server's separate reasoning text."""

    def _create_chat_result(
        self,
        response: dict[str, Any] | openai.BaseModel,
        generation_info: dict[str, Any] | None = None,
    ) -> ChatResult:
        result = super()._create_chat_result(response, generation_info)
        raw = response if isinstance(response, dict) else response.model_dump()
        for generation, choice in zip(result.generations, raw.get("choices") or [], strict=False):
            message = choice.get("message") or {}
            reasoning = message.get("reasoning_content") or message.get("reasoning")
            if isinstance(reasoning, str) and reasoning and isinstance(generation.message, AIMessage):
                generation.message.additional_kwargs["reasoning_content"] = reasoning
        return result


@dataclass(frozen=True)
class Completion:
    """One choice of a chat completion, with what the rollout store keeps."""

    content: str
    reasoning: str | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    temperature: float = 0.0
    confidence: float | None = None
    """Mean token log-probability, when log-probabilities were requested and returned."""
    endpoint: str | None = None
    """The base URL that answered."""


@dataclass(frozen=True)
class Sampling:
    model: str
    temperature: float
    top_p: float
    max_tokens: int
    n: int = 1
    logprobs: bool = False
    reasoning_effort: str | None = None


_CLIENTS: dict[tuple[Any, ...], ReasoningChatOpenAI] = {}
_CLIENTS_LOCK = threading.Lock()


def chat_model(
    base_url: str, api_key: str, sampling: Sampling, *, timeout: float, max_retries: int
) -> ReasoningChatOpenAI:
    """A cached client per endpoint and sampling settings (clients hold connection pools)."""
    key = (base_url, api_key, sampling, timeout, max_retries)
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            # `max_tokens` is sent under its classic name: vLLM and llama.cpp both read it. gpt-oss's
            # `reasoning_effort` goes in the body as vLLM's chat completions API expects it.
            extra: dict[str, Any] = {"max_tokens": sampling.max_tokens}
            if sampling.reasoning_effort:
                extra["reasoning_effort"] = sampling.reasoning_effort
            client = ReasoningChatOpenAI(
                model=sampling.model,
                base_url=base_url,
                api_key=api_key,  # type: ignore[arg-type]
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                n=sampling.n,
                logprobs=sampling.logprobs or None,
                max_retries=max_retries,
                timeout=timeout,
                extra_body=extra,
            )
            _CLIENTS[key] = client
    return client


def mean_logprob(logprobs: Any) -> float | None:
    """Mean of the tokens' log-probabilities in an OpenAI ``logprobs`` object (None when absent)."""
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not content:
        return None
    values = [float(t["logprob"]) for t in content if isinstance(t, dict) and t.get("logprob") is not None]
    return sum(values) / len(values) if values else None


def _completion(
    generation: ChatGeneration, usage: Mapping[str, Any], latency: float, n: int, temperature: float
) -> Completion:
    message = generation.message
    content = message.content if isinstance(message.content, str) else str(message.content)
    info = generation.generation_info or {}
    reasoning = message.additional_kwargs.get("reasoning_content")
    return Completion(
        content=content,
        reasoning=reasoning if isinstance(reasoning, str) else None,
        finish_reason=info.get("finish_reason"),
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0) // max(n, 1),
        latency_s=latency,
        temperature=temperature,
        confidence=mean_logprob(info.get("logprobs")),
    )


def complete(
    client: ReasoningChatOpenAI,
    messages: Sequence[Message],
    *,
    continue_final_message: bool = False,
) -> list[Completion]:
    """Send one chat completion request and return its choices (servers may return fewer than `n`)."""
    lc_messages: list[BaseMessage] = convert_to_messages([dict(m) for m in messages])
    kwargs: dict[str, Any] = {}
    if continue_final_message:
        # vLLM: continue the assistant prefill instead of opening a new turn.
        kwargs["extra_body"] = {
            **(client.extra_body or {}),
            "continue_final_message": True,
            "add_generation_prompt": False,
        }
    started = time.monotonic()
    result = client.generate([lc_messages], **kwargs)
    latency = time.monotonic() - started
    usage = (result.llm_output or {}).get("token_usage") or {}
    generations = result.generations[0]
    completions = []
    for generation in generations:
        if not isinstance(generation, ChatGeneration) or isinstance(generation.message, AIMessageChunk):
            raise TypeError("unexpected generation type from the chat model")
        completions.append(_completion(generation, usage, latency, len(generations), client.temperature or 0.0))
    if not completions:
        raise ValueError("the endpoint returned no choices")
    return completions


def sample(
    send: Callable[[Sampling], list[Completion]],
    sampling: Sampling,
    temperatures: Sequence[float],
) -> list[Completion]:
    """One completion per temperature, in order; `send` makes one request.

    With equal temperatures this is one request with ``n``; when the server returns fewer choices (llama.cpp
    ignores ``n``), the rest are separate requests. Different temperatures are separate requests, sent
    concurrently.
    """
    if not temperatures:
        return []
    if len(set(temperatures)) == 1:
        first = replace(sampling, temperature=temperatures[0], n=len(temperatures))
        results = send(first)[: len(temperatures)]
        single = replace(first, n=1)
        for _ in range(len(temperatures) - len(results)):
            results.extend(send(single))
        return results
    with ThreadPoolExecutor(max_workers=len(temperatures)) as pool:
        futures = [pool.submit(send, replace(sampling, temperature=t, n=1)) for t in temperatures]
        return [future.result()[0] for future in futures]
