"""How much of a reply is read, and for how long: every body an endpoint sends is read within bounds.

- **Time**: a body is read for at most the request timeout (``--request-timeout``) from its first byte; a
  streamed completion counts as one body. (The OpenAI client's own timeout is the wait for each read, so a
  body that trickles a byte at a time would never end without this one.)
- **Size**: a completion's body at most `reply_limit` bytes: `BASE_BYTES`, plus for every token asked for
  (``max_tokens`` times ``n``) `TOKEN_BYTES`, and `CANDIDATE_BYTES` per top log-probability asked for; the
  served model's extras (``/v1/models``, ``/tokenize``) at most `EXTRAS_BYTES`. Sizes are counted after
  decompression.
- **Error bodies** (4xx, 5xx) are read by the OpenAI client for its message: `BoundedTransport` cuts them at
  `ERROR_BYTES` (decompressed), and at the time bound.

A body past a bound, not valid JSON (or an event stream that holds no event), is an `UnusableReply`: like any
reply that cannot be used, the request is sent again, then its rollout is stored as failed with the reason
(`knowledge_flow.nodes.calls`). Bytes that are not UTF-8 are read as U+FFFD; ``NaN`` and ``Infinity`` are
not JSON.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

BASE_BYTES = 1 << 20
TOKEN_BYTES = 1024
CANDIDATE_BYTES = 256
EXTRAS_BYTES = 16 << 20
ERROR_BYTES = 64 << 10
#: How much of an unusable body its reason quotes.
QUOTED = 200


class UnusableReply(ValueError):
    """A reply that cannot be used: past a bound, not JSON, or not of the shape it must have."""


@dataclass(frozen=True)
class Bounds:
    max_bytes: int
    seconds: float


def reply_limit(max_tokens: int, n: int = 1, top_logprobs: int = 0) -> int:
    """The most bytes a completion's body may have (see the module)."""
    return BASE_BYTES + max(n, 1) * max(max_tokens, 0) * (TOKEN_BYTES + CANDIDATE_BYTES * max(top_logprobs, 0))


def chunks(response: httpx.Response, bounds: Bounds) -> Iterator[bytes]:
    """The body's bytes as they arrive; `UnusableReply` once past a bound."""
    deadline = time.monotonic() + bounds.seconds
    size = 0
    body = response.iter_bytes()
    while True:
        try:
            chunk = next(body, None)
        except httpx.HTTPError as exc:  # the connection broke, stalled or sent undecodable bytes mid-body
            raise UnusableReply(f"the reply broke off: {type(exc).__name__}: {exc}") from None
        if chunk is None:
            return
        size += len(chunk)
        if size > bounds.max_bytes:
            raise UnusableReply(f"the reply is larger than {bounds.max_bytes:,} bytes (the bound for this request)")
        if time.monotonic() > deadline:
            raise UnusableReply(f"the reply took more than {bounds.seconds:g} s to arrive (the request timeout)")
        yield chunk


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(data: bytes | str, what: str) -> Any:
    """`data` as JSON (`UnusableReply` when it is not); bytes that are not UTF-8 become U+FFFD."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    try:
        return json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise UnusableReply(f"{what} is not JSON ({type(exc).__name__}: {exc}): {text[:QUOTED]!r}") from None


def read_json(response: httpx.Response, bounds: Bounds) -> Any:
    """The body as JSON, read within `bounds`."""
    body = b"".join(chunks(response, bounds))
    kind = response.headers.get("content-type", "no content type")
    return parse_json(body, f"the reply ({kind})")


def _event(lines: list[str]) -> dict[str, Any] | None:
    """The JSON object of one event's data (None for the end marker)."""
    data = "\n".join(lines)
    if data.strip() == "[DONE]":
        return None
    value = parse_json(data, "a streamed event")
    if not isinstance(value, dict):
        raise UnusableReply(f"a streamed event is not a JSON object: {data[:QUOTED]!r}")
    return value


def events(response: httpx.Response, bounds: Bounds) -> Iterator[dict[str, Any]]:
    """The data of each server-sent event (JSON objects), up to ``[DONE]`` or the end of the body.

    Lines are split at LF (a CR before it dropped); comments and fields other than ``data`` are skipped, as
    the event-stream format says. A body without a single event is unusable."""
    pending: list[bytes] = []
    data: list[str] = []
    seen = 0
    head = b""

    def line_of(raw: bytes) -> tuple[bool, dict[str, Any] | None]:
        """(whether this line ends an event, the event's object: None at the end marker)."""
        nonlocal data
        line = raw.rstrip(b"\r").decode("utf-8", "replace")
        if not line:
            if not data:
                return False, None
            lines, data = data, []
            return True, _event(lines)
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)
        return False, None

    for chunk in chunks(response, bounds):
        if len(head) < QUOTED:
            head += chunk[: QUOTED - len(head)]
        while (cut := chunk.find(b"\n")) >= 0:
            pending.append(chunk[:cut])
            chunk = chunk[cut + 1 :]
            ended, found = line_of(b"".join(pending))
            pending = []
            if ended and found is None:
                return
            if found is not None:
                seen += 1
                yield found
        if chunk:
            pending.append(chunk)
    if pending:
        line_of(b"".join(pending))
    if data:
        found = _event(data)
        if found is not None:
            seen += 1
            yield found
    if not seen:
        kind = response.headers.get("content-type", "no content type")
        raise UnusableReply(f"the reply is not an event stream ({kind}): {head.decode('utf-8', 'replace')!r}")


class _CutBody(httpx.SyncByteStream):
    """An error body cut at `ERROR_BYTES` (decompressed here, within that bound: gzip and deflate; a body in
    another encoding is dropped) and at the time bound."""

    def __init__(self, inner: httpx.SyncByteStream, seconds: float, encoding: str) -> None:
        self.inner = inner
        self.deadline = time.monotonic() + seconds
        self.encoding = encoding

    def __iter__(self) -> Iterator[bytes]:
        if self.encoding not in ("", "identity", "gzip", "deflate"):
            return
        decoder = zlib.decompressobj(47) if self.encoding in ("gzip", "deflate") else None  # 47: any header
        size = 0
        try:
            for chunk in self.inner:
                piece = decoder.decompress(chunk, ERROR_BYTES - size) if decoder is not None else chunk
                piece = piece[: ERROR_BYTES - size]
                size += len(piece)
                yield piece
                if size >= ERROR_BYTES or time.monotonic() > self.deadline:
                    return
        except zlib.error:
            return

    def close(self) -> None:
        self.inner.close()


class BoundedTransport(httpx.HTTPTransport):
    """The HTTP transport of every client: error bodies are cut (see the module); other bodies are read
    within bounds by `read_json` and `events`."""

    def __init__(self, seconds: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seconds = seconds

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if response.status_code >= 400:
            stream = response.stream
            assert isinstance(stream, httpx.SyncByteStream)
            encoding = response.headers.pop("content-encoding", "").strip().lower()
            response.stream = _CutBody(stream, self.seconds, encoding)
        return response
