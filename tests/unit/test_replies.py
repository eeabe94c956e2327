"""The shape a reply must have (`endpoint.replies`) and how bodies are read (`endpoint.bounds`)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from knowledge_flow.endpoint.bounds import Bounds, UnusableReply, events, read_json, reply_limit
from knowledge_flow.endpoint.replies import MAX_COUNT, chat_reply, chunk, completion_reply

WIDE = Bounds(1 << 20, 60.0)


def reply(content: Any = "ok", **choice: Any) -> dict[str, Any]:
    return {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, **choice}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2},
    }


def test_a_chat_completion_is_read_with_its_texts_storable() -> None:
    checked = chat_reply(reply("a \ud800 b \x00 c", finish_reason="stop"))
    assert checked["choices"][0]["message"]["content"] == "a \ufffd b \ufffd c"
    assert checked["usage"] == {"prompt_tokens": 3, "completion_tokens": 2}
    assert completion_reply({"choices": [{"text": "t"}]})["choices"][0]["text"] == "t"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ([], "not a chat completion but a JSON list"),
        ("str", "not a chat completion but a JSON str"),
        (None, "JSON NoneType"),
        ({}, "choices: Field required"),
        ({"choices": []}, "choices: List should have at least 1 item"),
        ({"choices": "x"}, "choices: Input should be a valid list"),
        ({"choices": [{"index": 0}]}, "choices.0.message: Field required"),
        ({"choices": [{"message": None}]}, "choices.0.message"),
        (reply({"text": "7"}), "choices.0.message.content: Input should be a valid string"),
        (reply(5), "choices.0.message.content"),
        (reply(finish_reason=3), "choices.0.finish_reason"),
        (reply(finish_reason="x" * 65), "choices.0.finish_reason"),
        ({**reply(), "usage": "x"}, "usage"),
        ({**reply(), "usage": {"prompt_tokens": -1}}, "usage.prompt_tokens"),
        ({**reply(), "usage": {"prompt_tokens": MAX_COUNT + 1}}, "usage.prompt_tokens"),
        (reply(logprobs={"content": [{"logprob": float("nan")}]}), "choices.0.logprobs.content.0.logprob"),
        (reply(logprobs={"content": [{"logprob": -1.0, "top_logprobs": [{"logprob": "x"}]}]}), "top_logprobs"),
        ({"error": {"message": "overloaded"}}, "sent an error instead of a chat completion: overloaded"),
        ({"object": "error", "message": "bad"}, "sent an error instead of a chat completion: bad"),
    ],
)
def test_what_is_not_a_chat_completion(data: Any, reason: str) -> None:
    with pytest.raises(UnusableReply, match=reason.replace(".", r"\.")):
        chat_reply(data)


def test_streamed_chunks() -> None:
    assert chunk({"choices": [{"index": 0, "delta": {"reasoning_content": "r"}}]}, chat=True)["choices"][0]["delta"][
        "reasoning_content"
    ] == ("r")
    assert chunk({"choices": [], "usage": {"prompt_tokens": 1}}, chat=True)["usage"]["prompt_tokens"] == 1
    assert chunk({"choices": [{"text": "t", "logprobs": {"token_logprobs": [-0.5]}}]}, chat=False)["choices"]
    with pytest.raises(UnusableReply, match=r"delta\.content"):
        chunk({"choices": [{"delta": {"content": ["x"]}}]}, chat=True)
    with pytest.raises(UnusableReply, match="sent an error instead of a streamed chunk"):
        chunk({"error": "boom"}, chat=True)


def body(data: bytes, content_type: str = "application/json") -> httpx.Response:
    return httpx.Response(200, content=data, headers={"content-type": content_type})


def test_read_json() -> None:
    assert read_json(body(b'{"a": "\xff\xfe"}'), WIDE) == {"a": "\ufffd\ufffd"}  # not UTF-8: U+FFFD
    for data, reason in (
        (b'{"a": NaN}', "NaN is not JSON"),
        (b'{"a": -Infinity}', "-Infinity is not JSON"),
        (b"<html>", r"the reply \(text/html\) is not JSON"),
        (b"[" * 100_000, "is not JSON"),
    ):
        with pytest.raises(UnusableReply, match=reason):
            read_json(body(data, "text/html" if data == b"<html>" else "application/json"), WIDE)
    with pytest.raises(UnusableReply, match="larger than 10 bytes"):
        read_json(body(b'{"a": "0123456789"}'), Bounds(10, 60.0))


def stream(data: bytes) -> list[dict[str, Any]]:
    return list(events(body(data, "text/event-stream"), WIDE))


def test_events() -> None:
    one, two = {"n": 1}, {"n": 2}
    assert stream(f"data: {json.dumps(one)}\n\ndata: {json.dumps(two)}\n\n".encode()) == [one, two]
    assert stream(b': comment\r\nevent: x\r\nid: 3\r\ndata: {"n":\r\ndata: 1}\r\n\r\n') == [one]  # data lines join
    assert stream(b'data:{"n": 1}\n\ndata: [DONE]\n\ndata: {"n": 2}\n\n') == [one]  # nothing after [DONE]
    assert stream(b'data: {"n": 1}') == [one]  # the last event needs no blank line
    with pytest.raises(UnusableReply, match="not an event stream"):
        stream(b"garbage\n" * 100)
    with pytest.raises(UnusableReply, match="a streamed event is not a JSON object"):
        stream(b"data: [1, 2]\n\n")
    with pytest.raises(UnusableReply, match="a streamed event is not JSON"):
        stream(b"data: {nope\n\n")


def test_reply_limit_grows_with_what_is_asked() -> None:
    assert reply_limit(0) == 1 << 20
    assert reply_limit(1000, n=2, top_logprobs=20) == (1 << 20) + 2 * 1000 * (1024 + 256 * 20)
