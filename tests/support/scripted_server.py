"""A scripted OpenAI-compatible server: real HTTP on 127.0.0.1, scripted replies, every request recorded.

Replies come from a responder: ``responder(request) -> Reply``. The request carries the messages and
``index``: how many replies were *delivered* so far for the same key (by default, the problem the prompt
contains). A request whose client went away before the reply (a killed process) does not advance the
index, so a resumed run gets the same reply again, as a deterministic model would give.

Streaming (``"stream": true``): the reply goes out as server-sent events, one token per chunk (the reasoning's
tokens first, as ``reasoning_content``, then the content's; a token is a run of non-blank characters with the
blanks before it), each with its log-probability and top log-probabilities when asked for, then a chunk with
the finish reason, a usage chunk (``stream_options.include_usage``) and ``[DONE]``. Before each token the
server checks whether the client closed the connection: a client that stops reading and closes the stream
ends the reply there, and the request records it (`closed_by_client`) with the tokens sent so far
(`tokens_sent`, of `tokens_total`).

Raw replies (`Raw`): a reply can instead be sent byte for byte, with any status, content type and headers,
at once or trickled (chunked, a pause between pieces, a piece repeated until the client goes away): what a
gateway, a broken proxy or a hostile server sends (see `tests.support.hostile_server`). `extras` answers the
requests other than chat completions (``/v1/models``, ``/tokenize``, ...) the same way when it returns one.

Run as a script (``python -m tests.support.scripted_server --script FILE --port P``) for subprocess tests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit


@dataclass
class Raw:
    """A reply sent as these bytes (well-formed or not)."""

    body: bytes = b""
    status: int = 200
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    pause_s: float = 0.0
    """With `pieces` or `forever`: the pause before each piece (the body is sent chunked)."""
    pieces: Sequence[bytes] = ()
    """Sent after `body`, one at a time."""
    forever: bytes | None = None
    """Sent again and again after the pieces, until the client goes away (or `MAX_FOREVER_S` passed)."""


#: The longest a `Raw.forever` reply goes on when the client never leaves.
MAX_FOREVER_S = 120.0


@dataclass
class Reply:
    content: str
    reasoning: str | None = None
    reasoning_key: str = "reasoning_content"
    finish_reason: str = "stop"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    delay_s: float = 0.0
    status: int = 200
    hold: threading.Event | None = None
    """When set, the reply waits until the event is set (tests kill the client meanwhile)."""
    logprobs: list[float] | None = None
    """Token log-probabilities to return (when the request asked for them)."""
    fault: str | None = None
    """Inject a fault instead of the reply: 500, 503, 429, timeout, reset, truncated or length; for a stream
    also cut (the stream ends properly after half the tokens, with no finish reason and no [DONE])."""
    top_logprobs: list[list[float]] | None = None
    """Per token, the top candidates' log-probabilities to return (when the request asked for them); the
    sampled token's log-probability is `logprobs[i]`, or the first candidate's when `logprobs` is not set."""
    token_delay_s: float = 0.0
    """Streaming: the pause before each token (time for the client to close the stream)."""
    raw: Raw | None = None
    """Send these bytes instead of the reply."""


@dataclass
class Request:
    body: dict[str, Any]
    headers: dict[str, str]
    key: str
    index: int
    started: float
    ended: float | None = None
    delivered: bool = False
    aborted: bool = False
    status: int = 200
    fault: str | None = None
    choice: int = 0
    """Which of the `n` choices a responder call is for."""
    stream: bool = False
    tokens_total: int = 0
    """Streaming: the tokens the reply has."""
    tokens_sent: int = 0
    """Streaming: the tokens written before the reply ended (all of them, or up to the client's close)."""
    closed_by_client: bool = False
    """Streaming: the client closed the connection before the reply was complete."""
    query: dict[str, str] = field(default_factory=dict)
    """The query parameters of the request's URL."""

    @property
    def messages(self) -> list[dict[str, Any]]:
        value: list[dict[str, Any]] = self.body.get("messages", [])
        return value

    @property
    def prompt(self) -> str:
        return "\n".join(str(m.get("content", "")) for m in self.messages if m.get("role") == "user")


Responder = Callable[[Request], Reply]


def word_count(text: str) -> int:
    return max(1, len(text.split()))


@dataclass
class ScriptedServer:
    responder: Responder
    keys: Sequence[str] = ()
    """Problem texts: a request's key is the first of them its prompt contains ("default" otherwise)."""
    requests: list[Request] = field(default_factory=list)
    model: str = "scripted-model"
    honour_n: bool = True
    """Return `n` choices when asked (vLLM does; llama.cpp returns one)."""
    port: int = 0
    timeout_fault_s: float = 3.0
    """How long a `timeout` fault keeps the client waiting (longer than its request timeout)."""
    extras: Callable[[str, dict[str, Any]], Raw | None] | None = None
    """Answers a request other than a chat completion (path, JSON body; ``{}`` for a GET), or None for the
    default answer."""

    def __post_init__(self) -> None:
        self.dead = False
        self._lock = threading.Lock()
        self._delivered: dict[str, int] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out at once, no 40 ms delayed-ACK stall

            def log_message(self, *_args: Any) -> None:
                pass

            def _send(self, status: int, payload: Mapping[str, Any]) -> bool:
                try:
                    write_response(self, status, json.dumps(payload).encode())
                    self.wfile.flush()
                    return True
                except OSError:
                    return False

            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                raw = server.extras(path, {}) if server.extras is not None else None
                if raw is not None:
                    server.send_raw(self, raw)
                elif path.rstrip("/") in ("/v1/models", "/models"):
                    self._send(200, {"object": "list", "data": [{"id": server.model, "object": "model"}]})
                elif self.path == "/health":
                    self._send(200, {"status": "ok"})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                path, query = urlsplit(self.path).path, dict(parse_qsl(urlsplit(self.path).query))
                if not path.rstrip("/").endswith("/chat/completions"):
                    raw = server.extras(path, body) if server.extras is not None else None
                    if raw is not None:
                        server.send_raw(self, raw)
                    else:
                        self._send(404, {"error": {"message": "not found"}})
                    return
                server._complete(self, body, {k.lower(): v for k, v in self.headers.items()}, query)

        self.httpd = _QuietServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    # ------------------------------------------------------------------------------------------------
    def key_of(self, body: dict[str, Any]) -> str:
        prompt = "\n".join(str(m.get("content", "")) for m in body.get("messages", []))
        for key in self.keys:
            if key in prompt:
                return key
        return "default"

    def _complete(
        self,
        handler: BaseHTTPRequestHandler,
        body: dict[str, Any],
        headers: dict[str, str],
        query: dict[str, str] | None = None,
    ) -> None:
        key = self.key_of(body)
        with self._lock:
            request = Request(
                body=body,
                headers=headers,
                key=key,
                index=self._delivered.get(key, 0),
                started=time.monotonic(),
                query=query or {},
            )
            self.requests.append(request)
        reply = self.responder(request)
        if reply.hold is not None:
            reply.hold.wait(timeout=120)
        if reply.delay_s:
            time.sleep(reply.delay_s)
        if self.dead:  # a crashed replica: drop the connection without answering
            request.aborted = True
            request.ended = time.monotonic()
            handler.close_connection = True
            with contextlib.suppress(OSError):
                handler.connection.shutdown(socket.SHUT_RDWR)
            return
        request.fault = reply.fault
        if reply.fault is not None and reply.fault != "cut" and self._inject(handler, request, reply):
            return
        if _peer_closed(handler.connection):
            request.aborted = True
            request.ended = time.monotonic()
            return
        if reply.raw is not None:
            request.status = reply.raw.status
            request.delivered = self.send_raw(handler, reply.raw)
            request.aborted = not request.delivered
            request.ended = time.monotonic()
            return
        request.status = reply.status
        if reply.status != 200:  # the reply's content, when there is one, is the error message
            message = reply.content or "scripted failure"
            handler._send(reply.status, {"error": {"message": message, "type": "server_error"}})  # type: ignore[attr-defined]
            request.ended = time.monotonic()
            return
        if body.get("stream"):
            self._stream(handler, request, reply, body)
            return
        count = int(body.get("n") or 1) if self.honour_n else 1
        replies = [reply] + [self.responder(replace(request, index=request.index, choice=i)) for i in range(1, count)]
        choices = []
        for number, choice_reply in enumerate(replies):
            message: dict[str, Any] = {"role": "assistant", "content": choice_reply.content}
            if choice_reply.reasoning is not None:
                message[choice_reply.reasoning_key] = choice_reply.reasoning
            logprobs = None
            if body.get("logprobs") and (choice_reply.logprobs is not None or choice_reply.top_logprobs is not None):
                positions = len(choice_reply.logprobs or choice_reply.top_logprobs or [])
                logprobs = {"content": [logprob_entry(choice_reply, i, f"t{i}", body) for i in range(positions)]}
            choices.append(
                {"index": number, "message": message, "finish_reason": choice_reply.finish_reason, "logprobs": logprobs}
            )
        prompt_tokens = reply.prompt_tokens or sum(word_count(str(m.get("content", ""))) for m in body["messages"])
        completion_tokens = sum(r.completion_tokens or word_count(r.content + (r.reasoning or "")) for r in replies)
        payload = {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", self.model),
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        ok = handler._send(200, payload)  # type: ignore[attr-defined]
        with self._lock:
            request.ended = time.monotonic()
            request.delivered = ok
            if ok:
                self._delivered[key] = self._delivered.get(key, 0) + 1

    def _stream(self, handler: BaseHTTPRequestHandler, request: Request, reply: Reply, body: dict[str, Any]) -> None:
        request.stream = True
        thought, said = tokens_of(reply.reasoning or ""), tokens_of(reply.content)
        request.tokens_total = len(thought) + len(said)
        base = {"id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion.chunk", "created": 0}
        base["model"] = body.get("model", self.model)

        def event(payload: Any) -> None:
            data = b"data: " + (payload if isinstance(payload, bytes) else json.dumps(payload).encode()) + b"\n\n"
            handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            handler.wfile.flush()

        def chunk(delta: dict[str, Any], logprobs: Any = None, finish: str | None = None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            return {**base, "choices": [choice]}

        try:
            handler.send_response(200)
            handler.send_header("Content-Type", "text/event-stream")
            handler.send_header("Cache-Control", "no-cache")
            handler.send_header("Transfer-Encoding", "chunked")
            handler.end_headers()
            event(chunk({"role": "assistant", "content": ""}))
            for position, (field_name, token) in enumerate(
                [(reply.reasoning_key, t) for t in thought] + [("content", t) for t in said]
            ):
                if reply.fault == "cut" and position >= request.tokens_total // 2:
                    handler.wfile.write(b"0\r\n\r\n")
                    handler.wfile.flush()
                    request.ended = time.monotonic()
                    return
                if reply.token_delay_s:
                    time.sleep(reply.token_delay_s)
                if _peer_closed(handler.connection):
                    raise ConnectionResetError("the client closed the stream")
                logprobs = {"content": [logprob_entry(reply, position, token, body)]} if body.get("logprobs") else None
                event(chunk({field_name: token}, logprobs))
                request.tokens_sent = position + 1
            event(chunk({}, None, reply.finish_reason))
            if (body.get("stream_options") or {}).get("include_usage"):
                prompt_tokens = reply.prompt_tokens or sum(
                    word_count(str(m.get("content", ""))) for m in body["messages"]
                )
                usage = {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": request.tokens_total,
                    "total_tokens": prompt_tokens + request.tokens_total,
                }
                event({**base, "choices": [], "usage": usage})
            event(b"[DONE]")
            handler.wfile.write(b"0\r\n\r\n")
            handler.wfile.flush()
        except OSError:
            request.aborted = True
            request.closed_by_client = True
            request.ended = time.monotonic()
            handler.close_connection = True
            return
        with self._lock:
            request.ended = time.monotonic()
            request.delivered = True
            self._delivered[request.key] = self._delivered.get(request.key, 0) + 1

    def send_raw(self, handler: BaseHTTPRequestHandler, raw: Raw) -> bool:
        """Send `raw`; False when the client went away first (always, for a reply that goes on forever)."""
        chunked = bool(raw.pieces) or raw.forever is not None
        try:
            handler.send_response(raw.status)
            handler.send_header("Content-Type", raw.content_type)
            for name, value in raw.headers.items():
                handler.send_header(name, value)
            if not chunked:
                handler.send_header("Content-Length", str(len(raw.body)))
                handler.end_headers()
                handler.wfile.write(raw.body)
                handler.wfile.flush()
                return True
            handler.send_header("Transfer-Encoding", "chunked")
            handler.end_headers()

            def piece(data: bytes) -> None:
                if data:
                    handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                    handler.wfile.flush()

            piece(raw.body)
            for data in raw.pieces:
                time.sleep(raw.pause_s)
                piece(data)
            if raw.forever is not None:
                until = time.monotonic() + MAX_FOREVER_S
                while time.monotonic() < until:
                    time.sleep(raw.pause_s)
                    if _peer_closed(handler.connection):
                        raise ConnectionResetError("the client went away")
                    piece(raw.forever)
                return False
            handler.wfile.write(b"0\r\n\r\n")
            handler.wfile.flush()
            return True
        except OSError:
            handler.close_connection = True
            return False

    def _inject(self, handler: BaseHTTPRequestHandler, request: Request, reply: Reply) -> bool:
        """Send the fault; True when nothing else is to be sent (`length` goes on as a normal reply)."""
        fault = reply.fault
        request.ended = time.monotonic()
        if fault in ("500", "503"):
            request.status = int(fault)
            handler._send(int(fault), {"error": {"message": "injected", "type": "server_error"}})  # type: ignore[attr-defined]
            return True
        if fault == "429":
            request.status = 429
            data = b'{"error": {"message": "slow down", "type": "rate_limit"}}'
            write_response(handler, 429, data, {"Retry-After": "1"})
            return True
        if fault == "timeout":
            time.sleep(self.timeout_fault_s)
            request.aborted = True
            handler.close_connection = True
            return True
        if fault == "reset":
            request.aborted = True
            handler.close_connection = True
            with contextlib.suppress(OSError):
                handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                handler.connection.close()
            return True
        if fault == "truncated":
            data = b'{"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assis'
            write_response(handler, 200, data)
            return True
        if fault == "length":
            reply.content = reply.content[: max(1, len(reply.content) // 3)]
            reply.finish_reason = "length"
            reply.fault = None
            return False
        raise ValueError(f"unknown fault {fault!r}")

    # ------------------------------------------------------------------------------------------------
    def start(self) -> ScriptedServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        if not self.dead:
            self.httpd.shutdown()
            self.httpd.server_close()

    def kill(self) -> None:
        """Crash: refuse new connections and drop every request in flight or still to come."""
        self.dead = True
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> ScriptedServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def delivered(self, key: str | None = None) -> list[Request]:
        return [r for r in self.requests if r.delivered and (key is None or r.key == key)]


class _QuietServer(ThreadingHTTPServer):
    """A client that goes away mid-request (a killed process, a bound reached) is no server error."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def tokens_of(text: str) -> list[str]:
    """The tokens a reply is streamed in: each run of non-blank characters with the blanks before it (trailing
    blanks go with the last token), so that they join into `text` again."""
    tokens = re.findall(r"\s*\S+", text)
    rest = text[len("".join(tokens)) :]
    if rest:
        tokens = [*tokens[:-1], tokens[-1] + rest] if tokens else [rest]
    return tokens


def logprob_entry(reply: Reply, position: int, token: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """One position of ``logprobs.content``: the sampled token's log-probability and, as many as asked for,
    the top candidates'."""
    tops = (reply.top_logprobs or [])[position] if reply.top_logprobs and position < len(reply.top_logprobs) else []
    if reply.logprobs is not None and position < len(reply.logprobs):
        value = reply.logprobs[position]
    else:
        value = tops[0] if tops else 0.0
    wanted = int(body.get("top_logprobs") or 0)
    top = [{"token": f"c{j}", "logprob": v, "bytes": None} for j, v in enumerate(tops[:wanted])]
    return {"token": token, "logprob": value, "bytes": None, "top_logprobs": top}


def _peer_closed(conn: socket.socket) -> bool:
    """True when the client has closed its end (a killed process): readable with nothing to read."""
    try:
        readable, _, _ = select.select([conn], [], [], 0)
        if not readable:
            return False
        return conn.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


FAULTS = ("500", "503", "429", "timeout", "reset", "truncated", "length")


def faulty(responder: Responder, rate: float, seed: int, faults: Sequence[str] = FAULTS) -> Responder:
    """Wrap `responder`: each request independently gets one of `faults` with probability `rate`."""
    import random

    rng = random.Random(seed)
    lock = threading.Lock()

    def respond(request: Request) -> Reply:
        reply = responder(request)
        with lock:
            if rng.random() < rate:
                reply.fault = rng.choice(list(faults))
        return reply

    return respond


def write_response(
    handler: BaseHTTPRequestHandler, status: int, data: bytes, headers: Mapping[str, str] | None = None
) -> None:
    """A JSON response with these exact body bytes (well-formed or not)."""
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def script_responder(scripts: Mapping[str, Sequence[str]]) -> Responder:
    """Reply with ``scripts[key][index]`` (the last one once the script runs out)."""

    def respond(request: Request) -> Reply:
        script = scripts.get(request.key) or scripts["default"]
        return Reply(content=script[min(request.index, len(script) - 1)])

    return respond


def kf_output(answer: str, summary: str, error_report: str | None = None) -> str:
    """A well-formed Knowledge Flow rollout."""
    head = f"[Error Report]: {error_report or 'N/A'}\n" if error_report is not None else ""
    return f"{head}[Summary]: {summary}\n[Answer]: Therefore, final answer is \\boxed{{{answer}}}."


def main() -> None:  # pragma: no cover - used by subprocess tests
    parser = argparse.ArgumentParser()
    parser.add_argument("--script", required=True, help="JSON: {key: [reply, ...]}")
    parser.add_argument("--port-file", required=True)
    args = parser.parse_args()
    with open(args.script) as handle:
        scripts = json.load(handle)
    server = ScriptedServer(script_responder(scripts), keys=[k for k in scripts if k != "default"]).start()
    with open(args.port_file, "w") as handle:
        handle.write(str(server.port))
    threading.Event().wait()


if __name__ == "__main__":  # pragma: no cover
    main()
