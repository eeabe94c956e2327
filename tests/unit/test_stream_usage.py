"""What a streamed request asks each server for, where a streamed completion's token count comes from, and
the waves of a trace budget."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from knowledge_flow.endpoint.client import Sampling, chat_request, completion_request
from knowledge_flow.endpoint.stream import (
    USAGE_AT_CLOSE,
    USAGE_CHUNKS,
    USAGE_RECEIVED,
    USAGE_SERVER,
    PositionHook,
    fold_stream,
)
from knowledge_flow.strategies.budget import budget_of, wave_size, waves_for

SAMPLING = Sampling(model="m", temperature=0.6, top_p=0.95, max_tokens=100, logprobs=True, top_logprobs=21)


class Stream:
    """The checked chunks of a streamed chat completion, one token each; `read` counts those consumed."""

    def __init__(self, chunks: list[dict[str, Any]]) -> None:
        self.chunks = chunks
        self.read = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for chunk in self.chunks:
            self.read += 1
            yield chunk


def tokens(count: int, *, logprobs: bool, continuous: bool, finish: bool, final_usage: bool) -> list[dict[str, Any]]:
    chunks = []
    for i in range(count):
        choice: dict[str, Any] = {"index": 0, "delta": {"content": f" t{i}"}, "finish_reason": None}
        if logprobs:
            choice["logprobs"] = {
                "content": [{"logprob": -0.1, "top_logprobs": [{"logprob": -0.1}, {"logprob": -2.0}]}]
            }
        chunk: dict[str, Any] = {"choices": [choice]}
        if continuous:
            chunk["usage"] = {"prompt_tokens": 7, "completion_tokens": i + 1}
        chunks.append(chunk)
    if finish:
        chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if final_usage:
        chunks.append({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": count}})
    return chunks


def stop_at(position: int) -> PositionHook:
    seen = [0]

    def hook(_tops: list[float]) -> bool:
        seen[0] += 1
        return seen[0] >= position

    return hook


@pytest.mark.parametrize(
    ("continuous", "logprobs", "cut", "final_usage", "expected"),
    [
        (True, True, 4, False, (4, USAGE_AT_CLOSE)),  # vLLM's continuous usage: its own count when closed
        (False, True, 4, False, (4, USAGE_RECEIVED)),  # no usage before the close: the tokens received
        (True, True, None, True, (10, USAGE_SERVER)),  # finished: the final usage
        (False, False, None, False, (10, USAGE_CHUNKS)),  # no usage, no log-probabilities: an estimate
    ],
)
def test_where_a_streamed_count_comes_from(
    continuous: bool, logprobs: bool, cut: int | None, final_usage: bool, expected: tuple[int, str]
) -> None:
    stream = Stream(tokens(10, logprobs=logprobs, continuous=continuous, finish=True, final_usage=final_usage))
    completion = fold_stream(stream, True, stop_at(cut) if cut else None, 0.0, 0.6)
    assert (completion.completion_tokens, completion.usage_source) == expected
    assert completion.cancelled == (cut is not None)
    assert stream.read == (cut if cut else len(stream.chunks))  # a cut stream is read no further


def test_what_each_server_is_asked_for() -> None:
    messages = [{"role": "user", "content": "x"}]
    vllm = chat_request(messages, SAMPLING, continue_final=False, server="vllm", stream=True)
    other = chat_request(messages, SAMPLING, continue_final=False, server="other", stream=True)
    assert vllm["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    assert other["stream_options"] == {"include_usage": True}  # unknown fields may be refused elsewhere
    assert vllm["top_logprobs"] == 21
    ids = completion_request([1, 2], SAMPLING, server="vllm", stream=True)
    assert ids["logprobs"] == 21 and ids["extra_body"]["return_tokens_as_token_ids"] is True
    assert "return_tokens_as_token_ids" not in completion_request([1, 2], SAMPLING, server="llama.cpp")["extra_body"]


def test_waves_of_a_trace_budget() -> None:
    # deepconf's default: a warm-up of 16, then 15 waves of 16
    assert waves_for(256, 16, 16) == 16 and budget_of(16, 16, 16) == 256
    # 100 traces: 16, then five waves of 16 and a last one of 4
    sizes = [wave_size(k, 16, 16, 100) for k in range(waves_for(100, 16, 16))]
    assert sizes == [16, 16, 16, 16, 16, 16, 4] and sum(sizes) == 100
    assert waves_for(16, 16, 16) == 1  # the warm-up alone
    assert [wave_size(k, 4, 4, None) for k in range(3)] == [4, 4, 4]  # no budget: whole waves
    assert wave_size(7, 16, 16, 100) == 16  # a run extended past its budget: whole waves
    with pytest.raises(ValueError, match="below the first wave"):
        waves_for(8, 16, 16)
