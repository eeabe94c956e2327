"""A hostile OpenAI-compatible endpoint: one case per way a reply can go wrong, on the scripted server.

Each `Case` is what the endpoint sends to the chat completions of one problem (the server keys requests by
the problem their prompt holds, so one server serves every case at once), or, for `extras` cases, to the
served model's extras (``/v1/models``, ``/tokenize``: one server per case). A `Switch` turns the whole
server healthy (resume tests): then every request gets a well-formed Knowledge Flow rollout with answer 7.

Cases whose replies can be used (`usable`) end as stored rollouts; the others as failed rollouts with a
reason that holds `reason`; `stops` cases stop the run (the endpoint failed for good). `stream` cases are
hostile to streamed requests (DeepConf) only. Several cases repeat the run's secrets (`KEY`, sent as the
bearer token from the URL's user-info; `QUERY_KEY`, a query parameter) and terminal escape sequences.
"""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.support.scripted_server import Raw, Reply, Request, kf_output

KEY = "sk-hostile-Q7f2x9SECRETkey-31337"
QUERY_KEY = "qk-hostile-Z8m4w1SECRETquery-2718"
SECRETS = (KEY, QUERY_KEY)
#: What must never be stored or shown: each secret's first 8 characters (any longer piece holds them).
PREFIXES = tuple(secret[:8] for secret in SECRETS)
ESCAPES = "\x1b[2J\x1b[H\x1b]0;pwned\x07\x1b[31m\u202e"
ANSWER = "7"


def url_of(port: int) -> str:
    """The endpoint URL with both secrets in it (user-info and query)."""
    return f"http://kflow:{KEY}@127.0.0.1:{port}/v1?api-key={QUERY_KEY}&tenant=team-a"


def good_reply(request: Request) -> Reply:
    return Reply(content=kf_output(ANSWER, f"the answer is {ANSWER}."))


def raw_json(value: Any) -> Raw:
    return Raw(json.dumps(value).encode())


def completion(content: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-hostile",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 10},
        **extra,
    }


def gzip_bomb() -> bytes:
    """A chat completion padded with 16 MiB of blanks, gzip-compressed (about 16 KiB on the wire)."""
    padded = json.dumps(completion(kf_output(ANSWER, "padded.")))[:-1] + ', "pad": "' + " " * (16 << 20) + '"}'
    return gzip.compress(padded.encode(), compresslevel=1)


def sse(*events: Any) -> bytes:
    return b"".join(b"data: " + (e if isinstance(e, bytes) else json.dumps(e).encode()) + b"\n\n" for e in events)


@dataclass(frozen=True)
class Case:
    name: str
    reply: Callable[[Request], Reply]
    usable: bool = False
    reason: str = ""
    """Part of the reason a failed rollout (or the stopped run) gives."""
    stops: bool = False
    stream: bool = False
    slow: bool = False
    """Its replies never end: the run needs a short request timeout."""
    extras: Callable[[str, dict[str, Any]], Raw | None] | None = None

    @property
    def problem(self) -> str:
        return f"Hostile case {self.name}: what is 3 + 4?"

    @property
    def exit_code(self) -> int:
        """`kflow solve` and `kflow eval` with this endpoint: 0 when its replies are usable, else 1."""
        return 0 if self.usable else 1


def raw(value: Raw) -> Callable[[Request], Reply]:
    return lambda _request: Reply(content="", raw=value)


ECHO = (
    f"I was told {KEY} and {KEY[:10]} and {QUERY_KEY[:12]}; Authorization: Bearer {KEY}; "
    f"see http://kflow:{KEY}@host/v1?api-key={QUERY_KEY}.\n"
)

CASES: tuple[Case, ...] = (
    Case(
        "html-200",
        raw(Raw(b"<!doctype html><html><body><h1>502 Bad Gateway</h1></body></html>", content_type="text/html")),
        reason="is not JSON",
    ),
    Case("json-list", raw(Raw(b"[]")), reason="not a chat completion but a JSON list"),
    Case("json-string", raw(Raw(b'"str"')), reason="not a chat completion but a JSON str"),
    Case("choices-string", raw(Raw(b'{"choices": "x"}')), reason="choices"),
    Case("no-message", raw(raw_json({"choices": [{"index": 0, "finish_reason": "stop"}]})), reason="message"),
    Case(
        "wrong-types",
        raw(raw_json({"choices": [{"index": 0, "message": {"content": {"text": ANSWER}}, "finish_reason": 3}]})),
        reason="content",
    ),
    Case(
        "huge-usage",
        raw(
            raw_json(completion(kf_output(ANSWER, "s."), usage={"prompt_tokens": "many", "completion_tokens": 10**30}))
        ),
        reason="usage",
    ),
    Case(
        "nan",
        raw(
            Raw(
                json.dumps(completion(kf_output(ANSWER, "s.")))
                .replace('"prompt_tokens": 10', '"prompt_tokens": NaN')
                .encode()
            )
        ),
        reason="NaN is not JSON",
    ),
    Case("deep-json", raw(Raw(b'{"choices": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")), reason="is not JSON"),
    Case(
        "error-200",
        raw(raw_json({"error": {"message": f"overloaded {ESCAPES} {KEY}", "type": "server_error"}})),
        reason="sent an error instead of a chat completion",
    ),
    Case(
        "too-large",
        raw(Raw(b'{"choices": [{"index": 0, "message": {"content": "' + b"x" * (4 << 20) + b'"}}]}')),
        reason="larger than",
    ),
    Case("gzip-bomb", raw(Raw(gzip_bomb(), headers={"Content-Encoding": "gzip"})), reason="larger than"),
    Case(
        "trickle-forever",
        raw(Raw(b'{"choices": [', forever=b" ", pause_s=0.2)),
        reason="took more than",
        slow=True,
    ),
    Case(
        "invalid-utf8",
        raw(
            Raw(
                json.dumps(completion("PLACEHOLDER " + kf_output(ANSWER, "bytes.")))
                .encode()
                .replace(b"PLACEHOLDER", b"\xff\xfe\x80")
            )
        ),
        usable=True,
    ),
    Case(
        "lone-surrogates",
        raw(Raw(json.dumps(completion("\ud800 " + kf_output(ANSWER, "half \udfff pair."))).encode())),
        usable=True,
    ),
    Case("nul-bytes", raw(raw_json(completion("\x00 " + kf_output(ANSWER, "nul \x00 inside.")))), usable=True),
    Case("echo-key", lambda _request: Reply(content=ECHO + kf_output(ANSWER, f"it was {KEY}.")), usable=True),
    Case(
        "ansi-content",
        lambda _request: Reply(
            content=f"{ESCAPES}[Summary]: {ESCAPES}sum\n[Answer]: \\boxed{{\x1b[31m{ANSWER}\x1b[0m}}",
            reasoning=ESCAPES,
        ),
        usable=True,
    ),
    Case(
        "server-error-ansi",
        raw(Raw(json.dumps({"error": {"message": f"{ESCAPES}boom {KEY[:12]}"}}).encode(), status=500)),
        stops=True,
        reason="InternalServerError",
    ),
    Case(
        "refused-ansi",
        raw(Raw(json.dumps({"error": {"message": f"{ESCAPES}no {KEY}"}}).encode(), status=400)),
        reason="BadRequestError",
    ),
    Case(
        "huge-error-body",
        raw(Raw(b"<html>" + b"x" * (10 << 20) + b"</html>", status=502, content_type="text/html")),
        stops=True,
        reason="InternalServerError: Error code: 502",
    ),
    Case(
        "error-trickle-forever",
        raw(Raw(b'{"error": {"message": "slow', status=503, forever=b" ", pause_s=0.2)),
        stops=True,
        reason="InternalServerError: Error code: 503",
        slow=True,
    ),
)

STREAM_CASES: tuple[Case, ...] = (
    Case(
        "sse-html",
        raw(Raw(b"<html>gateway</html>", content_type="text/html")),
        stream=True,
        reason="not an event stream",
    ),
    Case(
        "sse-garbage",
        raw(Raw(b"garbage line\n" * 50 + b"event: nothing\n\n", content_type="text/event-stream")),
        stream=True,
        reason="not an event stream",
    ),
    Case(
        "sse-not-json",
        raw(Raw(sse(b"{not json"), content_type="text/event-stream")),
        stream=True,
        reason="is not JSON",
    ),
    Case(
        "sse-wrong-types",
        raw(Raw(sse({"choices": [{"index": 0, "delta": {"content": 5}}]}), content_type="text/event-stream")),
        stream=True,
        reason="not a streamed chunk",
    ),
    Case(
        "sse-error-event",
        raw(Raw(sse({"error": {"message": f"boom {ESCAPES} {KEY}"}}), content_type="text/event-stream")),
        stream=True,
        reason="sent an error",
    ),
    Case(
        "sse-never-ends",
        raw(
            Raw(
                sse({"choices": [{"index": 0, "delta": {"content": "thinking"}}]}),
                content_type="text/event-stream",
                forever=b": keep-alive\n\n",
                pause_s=0.2,
            )
        ),
        stream=True,
        reason="took more than",
        slow=True,
    ),
    Case(
        "sse-echo-surrogates",
        lambda _request: Reply(
            content=f"\ud800 {ESCAPES} {KEY} " + kf_output(ANSWER, f"echo {KEY[:9]}."),
            top_logprobs=None,
        ),
        stream=True,
        usable=True,
    ),
)


def models_html(path: str, _body: dict[str, Any]) -> Raw | None:
    return Raw(b"<html>models</html>", content_type="text/html") if path.endswith("/models") else None


def models_huge(path: str, _body: dict[str, Any]) -> Raw | None:
    return Raw(b'{"data": ["' + b"x" * (32 << 20) + b'"]}') if path.endswith("/models") else None


def tokenizer_garbage(path: str, body: dict[str, Any]) -> Raw | None:
    """A server that looks like vLLM (its tokenizer counts the probe), then answers nonsense for chats."""
    if path != "/tokenize":
        return None
    if "messages" in body:
        return raw_json({"tokens": f"not ids {ESCAPES} {KEY}"})
    return raw_json({"count": 1, "tokens": [1], "max_model_len": 4096})


EXTRAS_CASES: tuple[Case, ...] = (
    Case("models-html", good_reply, usable=True, extras=models_html),
    Case("models-huge", good_reply, usable=True, extras=models_huge),
    Case("tokenizer-garbage", good_reply, stops=True, extras=tokenizer_garbage, reason="tokenizer reply"),
)


class Switch:
    """The responder of a hostile server: each problem's case until `heal()`, then good replies."""

    def __init__(self, cases: tuple[Case, ...]) -> None:
        self.cases = {case.problem: case for case in cases}
        self.healthy = threading.Event()

    @property
    def keys(self) -> list[str]:
        return list(self.cases)

    def heal(self) -> None:
        self.healthy.set()

    def __call__(self, request: Request) -> Reply:
        case = self.cases.get(request.key)
        if self.healthy.is_set() or case is None or case.stream != bool(request.body.get("stream")):
            return good_reply(request)
        return case.reply(request)

    def extras(self, path: str, body: dict[str, Any]) -> Raw | None:
        if self.healthy.is_set():
            return None
        for case in self.cases.values():
            if case.extras is not None:
                return case.extras(path, body)
        return None
