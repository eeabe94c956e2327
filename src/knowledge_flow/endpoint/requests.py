"""From a rollout's prompt to the request sent: the path, the prompt's token count, the generation budget.

Paths:

- ``chat``: the messages, answered in a new assistant turn (also after a final assistant message: the
  Markovian continuation);
- ``chat-continue``: a prefill continued as the assistant's message (``continue_final_message``), for models
  whose template does not open a thinking block;
- ``completion``: the chat template's rendering of the messages (with its generation prompt) as token ids,
  then the prefill's ids, sent to ``/v1/completions``: for thinking models, so the prefill stays inside the
  thinking block the template opened. The reasoning is split from the output here (the completions API has
  no reasoning parser): up to the last ``</think>`` (prefill included) is reasoning, the rest is the answer.

Budget: ``max_tokens = min(requested, context - prompt tokens - CONTEXT_MARGIN)`` when the server reports its
context. vLLM silently lowers a request that does not fit (0.32) or refuses it (0.10); either way the budget
must be computed. A prompt that leaves no room is a `PromptTooLong` (the rollout fails; nothing is sent).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Literal

from knowledge_flow.endpoint.client import Completion, Message, Sampling, chat, client_for, complete_ids
from knowledge_flow.endpoint.secrets import redact
from knowledge_flow.endpoint.served import THINK_END, Served
from knowledge_flow.endpoint.stream import PositionHook, chat_stream, complete_ids_stream
from knowledge_flow.endpoint.urls import address
from knowledge_flow.text.tokens import estimate_tokens

Path = Literal["chat", "chat-continue", "completion"]
#: Tokens kept free between the prompt and the context's end (template details the count may miss).
CONTEXT_MARGIN = 16
#: Per-message allowance of template tokens when only an estimate of the prompt is possible.
MESSAGE_OVERHEAD = 8


class PromptTooLong(ValueError):
    """The prompt leaves no room to generate in the served context."""

    def __init__(self, message: str, prompt_tokens: int) -> None:
        super().__init__(message)
        self.prompt_tokens = prompt_tokens


@dataclass(frozen=True)
class Prepared:
    path: Path
    messages: list[Message]
    """The messages as sent (``chat-continue``: ending with the prefill as the assistant's message)."""
    prefill: str | None
    prompt_ids: list[int] | None
    """``completion``: the prompt's token ids."""
    prompt_tokens: int | None
    """The prompt's length as counted before sending (None when the server cannot count chats)."""
    requested: int
    max_tokens: int
    """What is sent: the requested budget fitted to the served context."""


def prepare(served: Served, messages: Sequence[Message], prefill: str | None, requested: int) -> Prepared:
    info = served.info()
    ids: list[int] | None = None
    sent: list[Message] = [dict(m) for m in messages]
    if prefill and served.opens_thinking():
        path: Path = "completion"
        ids = (served.chat_ids(messages) or []) + served.text_ids(prefill)
        count: int | None = len(ids)
    elif prefill:
        path = "chat-continue"
        sent.append({"role": "assistant", "content": prefill})
        rendered = served.chat_ids(sent, continue_final=True)
        count = len(rendered) if rendered is not None else None
    else:
        path = "chat"
        rendered = served.chat_ids(sent)
        count = len(rendered) if rendered is not None else None
    if count is None and info.context is not None:
        count = sum(estimate_tokens(m["content"]) + MESSAGE_OVERHEAD for m in sent)
    allowed = requested
    if info.context is not None and count is not None:
        allowed = min(requested, info.context - count - CONTEXT_MARGIN)
        if allowed < 1:
            raise PromptTooLong(
                f"the prompt has {count} tokens; the served context of {info.name} is {info.context} tokens "
                f"(with a margin of {CONTEXT_MARGIN}): no room to generate",
                count,
            )
    return Prepared(path, sent, prefill, ids, count, requested, allowed)


def split_thinking_continuation(prefill: str, text: str) -> tuple[str, str]:
    """(reasoning, answer) of a generation that continued a prefill inside a thinking block."""
    cut = text.rfind(THINK_END)
    if cut < 0:
        return prefill + text, ""
    return prefill + text[:cut], text[cut + len(THINK_END) :].lstrip()


def received(served: Served, completion: Completion, url: str) -> Completion:
    """A completion as it may be kept: its texts without the run's secrets, tagged with the replica (as shown:
    see `urls.Address`)."""
    secrets = served.secrets
    return replace(
        completion,
        content=redact(completion.content, secrets),
        reasoning=redact(completion.reasoning, secrets) if completion.reasoning is not None else None,
        finish_reason=redact(completion.finish_reason, secrets) if completion.finish_reason is not None else None,
        endpoint=address(url).shown,
    )


def send(
    served: Served, prepared: Prepared, sampling: Sampling, url: str, *, timeout: float, max_retries: int
) -> list[Completion]:
    """Send `prepared` to the replica `url`; the choices, as they may be kept (`received`)."""
    client = client_for(url, served.api_key, timeout=timeout, max_retries=max_retries)
    sampling = replace(sampling, max_tokens=prepared.max_tokens)
    server = served.info().server
    if prepared.path == "completion":
        assert prepared.prompt_ids is not None and prepared.prefill is not None
        completions = complete_ids(client, prepared.prompt_ids, sampling, server=server)
        completions = [
            replace(c, reasoning=r or None, content=a)
            for c in completions
            for r, a in [split_thinking_continuation(prepared.prefill, c.content)]
        ]
    else:
        completions = chat(
            client, prepared.messages, sampling, continue_final=prepared.path == "chat-continue", server=server
        )
    return [received(served, c, url) for c in completions]


def send_stream(
    served: Served,
    prepared: Prepared,
    sampling: Sampling,
    url: str,
    *,
    timeout: float,
    max_retries: int,
    on_position: PositionHook | None,
) -> Completion:
    """Stream one completion of `prepared` from the replica `url` (see `client.chat_stream`); `on_position`
    sees each position's top log-probabilities and may stop the stream."""
    client = client_for(url, served.api_key, timeout=timeout, max_retries=max_retries)
    sampling = replace(sampling, max_tokens=prepared.max_tokens, n=1)
    server = served.info().server
    if prepared.path == "completion":
        assert prepared.prompt_ids is not None and prepared.prefill is not None
        completion = complete_ids_stream(client, prepared.prompt_ids, sampling, server=server, on_position=on_position)
        reasoning, answer = split_thinking_continuation(prepared.prefill, completion.content)
        completion = replace(completion, reasoning=reasoning or None, content=answer)
    else:
        completion = chat_stream(
            client,
            prepared.messages,
            sampling,
            continue_final=prepared.path == "chat-continue",
            server=server,
            on_position=on_position,
        )
    return received(served, completion, url)


def sample(
    send_one: Callable[[Sampling], list[Completion]], sampling: Sampling, temperatures: Sequence[float]
) -> list[Completion]:
    """One completion per temperature, in order; `send_one` makes one request.

    With equal temperatures this is one request with ``n``; when the server returns fewer choices (llama.cpp
    ignores ``n``), the rest are separate requests. Different temperatures are separate requests, sent
    concurrently. With a seed, completion i is sampled with ``seed + i`` (vLLM seeds choice i of a request
    with ``n`` so; a separate request for completion i is sent with that seed).
    """
    if not temperatures:
        return []
    if len(set(temperatures)) == 1:
        first = replace(sampling, temperature=temperatures[0], n=len(temperatures))
        results = send_one(first)[: len(temperatures)]
        while len(results) < len(temperatures):
            results.extend(send_one(replace(first, n=1, seed=seed_of(sampling, len(results)))))
        return results
    with ThreadPoolExecutor(max_workers=len(temperatures)) as pool:
        futures = [
            pool.submit(send_one, replace(sampling, temperature=t, n=1, seed=seed_of(sampling, i)))
            for i, t in enumerate(temperatures)
        ]
        return [future.result()[0] for future in futures]


def seed_of(sampling: Sampling, offset: int) -> int | None:
    """The seed of the request for completion `offset` of `sampling` (None when the run sends no seed)."""
    return None if sampling.seed is None else sampling.seed + offset
