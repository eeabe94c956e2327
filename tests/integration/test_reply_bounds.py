"""What is read from a reply, over real HTTP: size and time bounds of bodies, streams and error bodies; event
streams split anywhere; the keys of a URL sent where they belong."""

from __future__ import annotations

import gzip
import json
import time

import openai
import pytest

from knowledge_flow.endpoint.bounds import BASE_BYTES, ERROR_BYTES, TOKEN_BYTES, UnusableReply, reply_limit
from knowledge_flow.endpoint.client import Sampling, chat, client_for
from knowledge_flow.endpoint.stream import chat_stream
from tests.support.hostile_server import completion, sse
from tests.support.scripted_server import Raw, Reply, ScriptedServer, kf_output

MESSAGES = [{"role": "user", "content": "What is 3 + 4?"}]


def sampling(max_tokens: int = 16) -> Sampling:
    return Sampling(model="m", temperature=0.0, top_p=1.0, max_tokens=max_tokens)


def raw_server(scripted: type[ScriptedServer], raw: Raw) -> ScriptedServer:
    return scripted(lambda _request: Reply(content="", raw=raw)).start()


def padded(size: int) -> bytes:
    body = json.dumps(completion(kf_output("7", "s."))).encode()
    return body[:-1] + b', "pad": "' + b" " * size + b'"}'


def test_a_reply_past_its_size_bound_is_unusable(scripted: type[ScriptedServer]) -> None:
    server = raw_server(scripted, Raw(padded(2 << 20)))
    client = client_for(server.base_url, "k", timeout=30, max_retries=0)
    assert reply_limit(16) == BASE_BYTES + 16 * TOKEN_BYTES < 2 << 20
    with pytest.raises(UnusableReply, match="larger than 1,064,960 bytes"):
        chat(client, MESSAGES, sampling(16))
    # the bound grows with what the request asks for: the same body is a reply to 2,048 tokens
    assert chat(client, MESSAGES, sampling(2048))[0].content.endswith("\\boxed{7}.")


def test_a_compressed_reply_is_bounded_as_it_unpacks(scripted: type[ScriptedServer]) -> None:
    server = raw_server(scripted, Raw(gzip.compress(padded(32 << 20), 1), headers={"Content-Encoding": "gzip"}))
    client = client_for(server.base_url, "k", timeout=30, max_retries=0)
    with pytest.raises(UnusableReply, match="larger than"):
        chat(client, MESSAGES, sampling())


def test_a_body_that_trickles_is_cut_at_the_request_timeout(scripted: type[ScriptedServer]) -> None:
    server = raw_server(scripted, Raw(b'{"choices": [', forever=b" ", pause_s=0.1))
    client = client_for(server.base_url, "k", timeout=1.0, max_retries=0)
    started = time.monotonic()
    with pytest.raises(UnusableReply, match="took more than 1 s"):
        chat(client, MESSAGES, sampling())
    assert time.monotonic() - started < 30


def test_a_stream_that_never_ends_is_cut_at_the_request_timeout(scripted: type[ScriptedServer]) -> None:
    first = sse({"choices": [{"index": 0, "delta": {"content": "thinking"}}]})
    server = raw_server(
        scripted, Raw(first, content_type="text/event-stream", forever=b": keep-alive\n\n", pause_s=0.1)
    )
    client = client_for(server.base_url, "k", timeout=1.0, max_retries=0)
    with pytest.raises(UnusableReply, match="took more than 1 s"):
        chat_stream(client, MESSAGES, sampling())


@pytest.mark.parametrize("cut", [1, 5, 6, 7, 40, 83, 84])
def test_an_event_stream_split_anywhere_reads_the_same(scripted: type[ScriptedServer], cut: int) -> None:
    events = [
        {"choices": [{"index": 0, "delta": {"content": "seven: "}}]},
        {"choices": [{"index": 0, "delta": {"content": "\\boxed{7}"}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}},
    ]
    body = b": a comment\r\n" + sse(*events).replace(b"\n\n", b"\r\n\r\n") + b"data: [DONE]\r\n\r\n"
    pieces = [body[i : i + cut] for i in range(0, len(body), cut)]
    server = raw_server(scripted, Raw(b"", content_type="text/event-stream", pieces=pieces))
    client = client_for(server.base_url, "k", timeout=30, max_retries=0)
    done = chat_stream(client, MESSAGES, sampling())
    assert (done.content, done.finish_reason, done.prompt_tokens, done.completion_tokens) == (
        "seven: \\boxed{7}",
        "stop",
        3,
        2,
    )


def test_error_bodies_are_cut(scripted: type[ScriptedServer]) -> None:
    for raw in (
        Raw(b"<html>" + b"x" * (4 << 20) + b"</html>", status=500, content_type="text/html"),
        Raw(gzip.compress(b"y" * (64 << 20), 1), status=500, headers={"Content-Encoding": "gzip"}),
    ):
        client = client_for(raw_server(scripted, raw).base_url, "k", timeout=30, max_retries=0)
        with pytest.raises(openai.InternalServerError) as failed:
            chat(client, MESSAGES, sampling())
        assert 0 < len(failed.value.response.content) <= ERROR_BYTES
    trickling = Raw(b'{"error": "slow', status=503, forever=b" ", pause_s=0.1)
    client = client_for(raw_server(scripted, trickling).base_url, "k", timeout=1.0, max_retries=0)
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError):
        chat(client, MESSAGES, sampling())
    assert time.monotonic() - started < 30


def test_the_keys_of_a_url_go_where_they_belong(scripted: type[ScriptedServer]) -> None:
    server = scripted(lambda _request: Reply(content=kf_output("7", "s."))).start()
    url = f"http://user:s3cret-key-in-url@127.0.0.1:{server.port}/v1?api-key=query-secret&tenant=a"
    client = client_for(url, "key-from-the-environment", timeout=30, max_retries=0)
    assert chat(client, MESSAGES, sampling())[0].content.endswith("\\boxed{7}.")
    (request,) = server.requests
    assert request.headers["authorization"] == "Bearer s3cret-key-in-url"
    assert request.query == {"api-key": "query-secret", "tenant": "a"}
    plain = client_for(server.base_url, "key-from-the-environment", timeout=30, max_retries=0)
    chat(plain, MESSAGES, sampling())
    assert server.requests[-1].headers["authorization"] == "Bearer key-from-the-environment"
