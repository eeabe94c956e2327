"""Streamed completions that the client can stop (DeepConf's online filter on a stock server).

Streaming (`chat_stream`, `complete_ids_stream`): one choice, streamed with ``stream_options.include_usage``
(and vLLM's ``continuous_usage_stats``: usage in every chunk); each position's top log-probabilities go to the
caller's `on_position` as they arrive, and when it returns True the client closes the stream at once (the
server sees the connection close and stops generating: this is how a trace is cut short on a stock server).
Its finish reason is ``cancelled``. A cut stream gets no final usage; its completion tokens, and where they
come from (`Completion.usage_source`), are:

- ``server-at-close``: the server's own count in the last chunk read (vLLM's continuous usage);
- ``received``: the positions received, one log-probability entry per token;
- ``chunks-estimate``: the chunks with text received (a chunk may carry several tokens, or none): an estimate.

All three count the tokens up to the last chunk read; the server may have generated a few more before it saw
the connection close, which no OpenAI-compatible server reports. A stream the server ends without a finish
reason is a fault (`ValueError`), like a response without choices.

The events are read within bounds (`bounds.events`: size, time) and each chunk is checked (`replies.chunk`)
before it is folded in.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai

from knowledge_flow.endpoint.bounds import events
from knowledge_flow.endpoint.client import (
    Completion,
    Message,
    Sampling,
    chat_request,
    completion_request,
    reply_bounds,
)
from knowledge_flow.endpoint.replies import chunk as checked_chunk

#: Called with each streamed position's top log-probabilities; True stops the stream.
PositionHook = Callable[[list[float]], bool]
CANCELLED = "cancelled"
#: Where a streamed completion's token count comes from (see the module's docstring).
USAGE_SERVER, USAGE_AT_CLOSE, USAGE_RECEIVED, USAGE_CHUNKS = "server", "server-at-close", "received", "chunks-estimate"


@dataclass
class _StreamState:
    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)
    positions: int = 0
    chunks_with_text: int = 0
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    cancelled: bool = False


def _chat_chunk_positions(choice: Mapping[str, Any]) -> Iterable[tuple[float | None, list[float]]]:
    for entry in (choice.get("logprobs") or {}).get("content") or []:
        if isinstance(entry, dict):
            value = entry.get("logprob")
            tops = [float(c["logprob"]) for c in (entry.get("top_logprobs") or []) if c.get("logprob") is not None]
            yield (float(value) if value is not None else None), tops


def _completion_chunk_positions(choice: Mapping[str, Any]) -> Iterable[tuple[float | None, list[float]]]:
    logprobs = choice.get("logprobs") or {}
    values = logprobs.get("token_logprobs") or []
    tops = logprobs.get("top_logprobs") or []
    for position in range(max(len(values), len(tops))):
        value = values[position] if position < len(values) else None
        top = tops[position] if position < len(tops) else None
        yield (float(value) if value is not None else None), [float(v) for v in (top or {}).values() if v is not None]


def consume_chunk(state: _StreamState, chunk: Mapping[str, Any], chat: bool, on_position: PositionHook | None) -> bool:
    """Fold one streamed chunk into `state`; True when `on_position` asked to stop."""
    if chunk.get("usage"):
        state.usage = dict(chunk["usage"])
    for choice in chunk.get("choices") or []:
        if chat:
            delta = choice.get("delta") or {}
            text = delta.get("content") or ""
            thought = delta.get("reasoning") or delta.get("reasoning_content") or ""
            positions = _chat_chunk_positions(choice)
        else:
            text, thought = choice.get("text") or "", ""
            positions = _completion_chunk_positions(choice)
        if not isinstance(text, str) or not isinstance(thought, str):
            raise TypeError("unexpected content type in a streamed chunk")
        state.content.append(text)
        state.reasoning.append(thought)
        state.chunks_with_text += int(bool(text or thought))
        if choice.get("finish_reason"):
            state.finish_reason = choice["finish_reason"]
        for value, tops in positions:
            state.positions += 1
            if value is not None:
                state.token_logprobs.append(value)
            if on_position is not None and on_position(tops):
                state.cancelled = True
                return True
    return False


def fold_stream(
    chunks: Iterable[Mapping[str, Any]],
    chat: bool,
    on_position: PositionHook | None,
    started: float,
    temperature: float,
) -> Completion:
    """The completion that a stream of checked chunks makes, read until `on_position` asks to stop."""
    state = _StreamState()
    for chunk in chunks:
        if consume_chunk(state, chunk, chat, on_position):
            break
    if not state.cancelled and state.finish_reason is None:
        # the server ended the stream early (llama.cpp's server does so when another request arrives)
        raise ValueError("the stream ended before the completion did (no finish reason)")
    usage = state.usage or {}
    counted = usage.get("completion_tokens")
    if counted is not None:
        tokens, source = int(counted), USAGE_AT_CLOSE if state.cancelled else USAGE_SERVER
    elif state.positions:
        tokens, source = state.positions, USAGE_RECEIVED
    else:
        tokens, source = state.chunks_with_text, USAGE_CHUNKS
    return Completion(
        content="".join(state.content),
        reasoning="".join(state.reasoning) or None,
        finish_reason=CANCELLED if state.cancelled else state.finish_reason,
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=tokens,
        latency_s=time.monotonic() - started,
        temperature=temperature,
        token_logprobs=state.token_logprobs or None,
        cancelled=state.cancelled,
        usage_source=source,
    )


def _streamed(
    response: httpx.Response,
    sampling: Sampling,
    client: openai.OpenAI,
    chat: bool,
    on_position: PositionHook | None,
    started: float,
) -> Completion:
    chunks = (checked_chunk(data, chat) for data in events(response, reply_bounds(client, sampling)))
    try:
        return fold_stream(chunks, chat, on_position, started, sampling.temperature)
    finally:
        response.close()  # a cut stream closes the connection: the server stops generating


def chat_stream(
    client: openai.OpenAI,
    messages: Sequence[Message],
    sampling: Sampling,
    *,
    continue_final: bool = False,
    server: str = "vllm",
    on_position: PositionHook | None = None,
) -> Completion:
    """One streamed chat completion (a single choice), stopped early when `on_position` says so."""
    started = time.monotonic()
    request = chat_request(messages, sampling, continue_final=continue_final, server=server, stream=True)
    with client.chat.completions.with_streaming_response.create(**request) as response:
        return _streamed(response.http_response, sampling, client, True, on_position, started)


def complete_ids_stream(
    client: openai.OpenAI,
    prompt_ids: Sequence[int],
    sampling: Sampling,
    *,
    server: str = "vllm",
    on_position: PositionHook | None = None,
) -> Completion:
    """One streamed completion whose prompt is a list of token ids, stopped early when `on_position` says so."""
    started = time.monotonic()
    request = completion_request(prompt_ids, sampling, server=server, stream=True)
    with client.completions.with_streaming_response.create(**request) as response:
        return _streamed(response.http_response, sampling, client, False, on_position, started)
