"""Requests to an OpenAI-compatible endpoint through the OpenAI SDK (its retries, timeouts and backoff).

Three request shapes:

- `chat`: ``POST /v1/chat/completions``; with `continue_final` the last (assistant) message is continued
  (vLLM's ``continue_final_message``), otherwise the model answers in a new assistant turn;
- `complete_ids`: ``POST /v1/completions`` with a list of token ids as the prompt (a prefill that must continue
  inside a thinking block the chat template opened; see `knowledge_flow.endpoint.served`);
- the served model's extras (``/tokenize``, ``/detokenize``, ``/v1/models``) in `served`.

Every sampling parameter a run defines is sent (temperature, top_p, top_k, min_p, repetition_penalty): vLLM
fills omitted ones from the model's generation_config, which differs per model. Fields read: the reasoning
text is ``message.reasoning`` (vLLM >= 0.11) or ``reasoning_content`` (older vLLM and other servers); chat
log-probabilities are ``logprobs.content[j]`` with ``top_logprobs``, completion ones the older ``{tokens,
token_logprobs, top_logprobs}``; ``usage.completion_tokens`` sums over the ``n`` choices.

Streaming: `knowledge_flow.endpoint.stream`.

Replies: every body is read within bounds (`bounds`: size, time) and checked before use (`replies`); a reply
that cannot be used is an `UnusableReply`. Clients take their key from the URL's user-info when it has one,
and send its query parameters with every request (`urls.Address`).

Error texts are redacted (`secrets.redact`): an endpoint that echoes the API key or an Authorization header in
an error body never gets it stored, logged or shown.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import httpx
import openai

from knowledge_flow.endpoint.bounds import BoundedTransport, Bounds, UnusableReply, read_json, reply_limit
from knowledge_flow.endpoint.replies import chat_reply, completion_reply
from knowledge_flow.endpoint.secrets import describe, redact
from knowledge_flow.endpoint.urls import REDACTED, address

__all__ = ["REDACTED", "Completion", "EndpointError", "Sampling", "chat", "client_for", "describe", "redact"]

Message = Mapping[str, str]


def stream_options(server: str) -> dict[str, Any]:
    """What a streamed request adds: usage in the last chunk, and from vLLM in every chunk
    (``continuous_usage_stats``), so that a stream the client closes still has the server's count of the
    tokens it generated up to the last chunk read."""
    options: dict[str, Any] = {"include_usage": True}
    if server == "vllm":
        options["continuous_usage_stats"] = True
    return {"stream": True, "stream_options": options}


class EndpointError(RuntimeError):
    """The endpoint failed for good (retries and failover exhausted). Its message is redacted: it is what
    LangGraph records with the failed step, and what the command line shows."""


@contextmanager
def endpoint_errors(secrets: Sequence[str] = ()) -> Iterator[None]:
    """Turn the SDK's errors, and unusable replies that reach this far (those of the served model's extras:
    a completion's are handled where it is requested), into `EndpointError` (redacted, without the original
    as its cause)."""
    try:
        yield
    except (openai.APIError, UnusableReply) as exc:
        raise EndpointError(describe(exc, secrets)) from None


@dataclass(frozen=True)
class Sampling:
    model: str
    temperature: float
    top_p: float
    max_tokens: int
    top_k: int = -1
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    n: int = 1
    logprobs: bool = False
    top_logprobs: int | None = None
    reasoning_effort: str | None = None
    extra: Mapping[str, Any] | None = None
    """The run's own extra request fields (e.g. vLLM's ``structured_outputs``, ``chat_template_kwargs``)."""
    seed: int | None = None
    """The request's sampling seed (vLLM seeds choice i of a request with ``seed + i``); None: not sent."""

    def extra_body(self, server: str = "vllm") -> dict[str, Any]:
        """The sampling parameters outside the OpenAI schema, as the server names them, then the run's extra
        fields. llama.cpp's server calls the penalty ``repeat_penalty``, disables top-k with 0 (it answers -1
        with an error) and has its own non-neutral defaults (top_k 40, min_p 0.05, repeat_penalty 1.1), so every
        value is always sent."""
        if server == "llama.cpp":
            body = {"top_k": max(self.top_k, 0), "min_p": self.min_p, "repeat_penalty": self.repetition_penalty}
        else:
            body = {"top_k": self.top_k, "min_p": self.min_p, "repetition_penalty": self.repetition_penalty}
        return body | dict(self.extra or {})


@dataclass(frozen=True)
class Completion:
    """One choice, with what the rollout store keeps."""

    content: str
    reasoning: str | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    temperature: float = 0.0
    token_logprobs: list[float] | None = field(default=None, repr=False)
    """The sampled tokens' log-probabilities, when requested and returned."""
    top_logprobs: list[list[float]] | None = field(default=None, repr=False)
    """Per position, the log-probabilities of the top candidates, when requested and returned."""
    endpoint: str | None = None
    """The base URL that answered."""
    cancelled: bool = False
    """A streamed completion the client stopped (`on_position` returned True)."""
    usage_source: str | None = None
    """Streamed: where `completion_tokens` comes from (`endpoint.stream`); None: the response's usage."""

    @property
    def confidence(self) -> float | None:
        """Mean token log-probability (None without log-probabilities)."""
        values = self.token_logprobs
        return sum(values) / len(values) if values else None


_CLIENTS: dict[tuple[Any, ...], openai.OpenAI] = {}
_CLIENTS_LOCK = threading.Lock()


def client_for(url: str, api_key: str, *, timeout: float, max_retries: int, root: bool = False) -> openai.OpenAI:
    """A cached client per endpoint and settings (a client holds a connection pool). `url` as given: its
    user-info's key replaces `api_key`, its query parameters go with every request; `root`: the server's root
    (``/v1`` dropped), where vLLM's and llama.cpp's extras live."""
    key = (url, api_key, timeout, max_retries, root)
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            where = address(url)
            base = where.base[: -len("/v1")] if root and where.base.endswith("/v1") else where.base
            limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
            transport = BoundedTransport(timeout, limits=limits)
            http = httpx.Client(transport=transport, timeout=timeout, follow_redirects=True)
            client = openai.OpenAI(
                base_url=base,
                api_key=where.key or api_key,
                timeout=timeout,
                max_retries=max_retries,
                default_query=where.query or None,
                http_client=cast(Any, http),  # an httpx.Client: every openai version takes one
            )
            _CLIENTS[key] = client
    return client


def _split_usage(total: int, counts: Sequence[int | None]) -> list[int]:
    """Per-choice completion tokens: exact where the choice's log-probabilities give its length, the rest of
    `total` shared out evenly (the sum stays `total`)."""
    known = sum(c for c in counts if c is not None)
    unknown = [i for i, c in enumerate(counts) if c is None]
    rest = max(0, total - known)
    shares = [c or 0 for c in counts]
    for position, index in enumerate(unknown):
        shares[index] = rest // len(unknown) + (1 if position < rest % len(unknown) else 0)
    return shares


def _chat_logprobs(choice: Mapping[str, Any]) -> tuple[list[float] | None, list[list[float]] | None]:
    content = (choice.get("logprobs") or {}).get("content")
    if not content:
        return None, None
    tokens = [float(t["logprob"]) for t in content if isinstance(t, dict) and t.get("logprob") is not None]
    tops = [[float(c["logprob"]) for c in (t.get("top_logprobs") or [])] for t in content if isinstance(t, dict)]
    return tokens or None, tops if any(tops) else None


def _completion_logprobs(choice: Mapping[str, Any]) -> tuple[list[float] | None, list[list[float]] | None]:
    logprobs = choice.get("logprobs") or {}
    values = logprobs.get("token_logprobs")
    if not values:
        return None, None
    tokens = [float(v) for v in values if v is not None]
    tops = [[float(v) for v in (entry or {}).values()] for entry in (logprobs.get("top_logprobs") or [])]
    return tokens or None, tops if any(tops) else None


def _completions(raw: Mapping[str, Any], latency: float, temperature: float, chat: bool) -> list[Completion]:
    """The choices of a checked reply (`replies.chat_reply`, `replies.completion_reply`)."""
    choices = sorted(raw["choices"], key=lambda c: int(c["index"]))
    usage = raw.get("usage") or {}
    parsed = []
    for choice in choices:
        if chat:
            message = choice["message"]
            content = message.get("content") or ""
            reasoning = message.get("reasoning") or message.get("reasoning_content")
            tokens, tops = _chat_logprobs(choice)
        else:
            content, reasoning = choice.get("text") or "", None
            tokens, tops = _completion_logprobs(choice)
        parsed.append((choice, content, reasoning, tokens, tops))
    counts = _split_usage(int(usage.get("completion_tokens") or 0), [len(p[3]) if p[3] else None for p in parsed])
    return [
        Completion(
            content=content,
            reasoning=reasoning or None,
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=count,
            latency_s=latency,
            temperature=temperature,
            token_logprobs=tokens,
            top_logprobs=tops,
        )
        for (choice, content, reasoning, tokens, tops), count in zip(parsed, counts, strict=True)
    ]


def chat_request(
    messages: Sequence[Message], sampling: Sampling, *, continue_final: bool, server: str, stream: bool = False
) -> dict[str, Any]:
    """The arguments of a chat completion request (`client.chat.completions.create`)."""
    extra = sampling.extra_body(server)
    if continue_final:
        extra |= {"continue_final_message": True, "add_generation_prompt": False}
    request: dict[str, Any] = {
        "model": sampling.model,
        "messages": [dict(m) for m in messages],
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_tokens,
        "n": 1 if stream else sampling.n,
        "extra_body": extra,
    }
    if sampling.logprobs:
        request |= {"logprobs": True, "top_logprobs": sampling.top_logprobs or 0}
    if sampling.reasoning_effort:
        request["reasoning_effort"] = sampling.reasoning_effort
    if sampling.seed is not None:
        request["seed"] = sampling.seed
    if stream:
        request |= stream_options(server)
    return request


def completion_request(
    prompt_ids: Sequence[int], sampling: Sampling, *, server: str, stream: bool = False
) -> dict[str, Any]:
    """The arguments of a completion request whose prompt is token ids (`client.completions.create`)."""
    request: dict[str, Any] = {
        "model": sampling.model,
        "prompt": list(prompt_ids),
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_tokens,
        "n": 1 if stream else sampling.n,
        "extra_body": sampling.extra_body(server),
    }
    if sampling.logprobs:
        request["logprobs"] = sampling.top_logprobs or 1
        if server == "vllm":  # candidates keyed by token id: vLLM merges candidates with the same text otherwise
            request["extra_body"] = request["extra_body"] | {"return_tokens_as_token_ids": True}
    if sampling.seed is not None:
        request["seed"] = sampling.seed
    if stream:
        request |= stream_options(server)
    return request


def reply_bounds(client: openai.OpenAI, sampling: Sampling) -> Bounds:
    """What may be read of a completion's reply (see `bounds`): its size by what was asked, its time the
    client's timeout."""
    top = (sampling.top_logprobs or 1) if sampling.logprobs else 0
    timeout = client.timeout if isinstance(client.timeout, float | int) else 3600.0
    return Bounds(reply_limit(sampling.max_tokens, sampling.n, top), float(timeout))


def chat(
    client: openai.OpenAI,
    messages: Sequence[Message],
    sampling: Sampling,
    *,
    continue_final: bool = False,
    server: str = "vllm",
) -> list[Completion]:
    """One chat completion request; its choices (servers may return fewer than `n`)."""
    started = time.monotonic()
    request = chat_request(messages, sampling, continue_final=continue_final, server=server)
    with client.chat.completions.with_streaming_response.create(**request) as response:
        raw = chat_reply(read_json(response.http_response, reply_bounds(client, sampling)))
    return _completions(raw, time.monotonic() - started, sampling.temperature, chat=True)


def complete_ids(
    client: openai.OpenAI, prompt_ids: Sequence[int], sampling: Sampling, *, server: str = "vllm"
) -> list[Completion]:
    """One completion request whose prompt is a list of token ids (no chat template is applied)."""
    started = time.monotonic()
    request = completion_request(prompt_ids, sampling, server=server)
    with client.completions.with_streaming_response.create(**request) as response:
        raw = completion_reply(read_json(response.http_response, reply_bounds(client, sampling)))
    return _completions(raw, time.monotonic() - started, sampling.temperature, chat=False)
