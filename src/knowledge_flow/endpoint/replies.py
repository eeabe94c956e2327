"""The shape a reply must have before anything uses it (pydantic models of the fields that are read).

A chat completion needs ``choices``, each with a ``message``; a completion ``choices``; a streamed chunk may
have neither. Texts must be strings (or null), counts non-negative integers (at most `MAX_COUNT`),
log-probabilities finite numbers, the finish reason a string of at most `MAX_REASON` characters. Fields that
are not read are not checked. Every text is made storable (`knowledge_flow.text.safe.storable`) here. A reply
that is a JSON object with ``error`` (a 200 from a gateway or a stream that failed) is unusable with that
error's message. Anything else: `UnusableReply`, with the first field that is wrong.

The checked reply is returned as a plain ``dict`` (``model_dump``): the readers in `client` and `stream`
take the fields they need from it.
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from knowledge_flow.endpoint.bounds import QUOTED, UnusableReply
from knowledge_flow.text.safe import storable

MAX_COUNT = 1 << 40
MAX_REASON = 64

Text = Annotated[str, AfterValidator(storable)]
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
LogProb = Annotated[float, Field(allow_inf_nan=False)]
Reason = Annotated[str, Field(max_length=MAX_REASON), AfterValidator(storable)]


class _Read(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Candidate(_Read):
    logprob: LogProb


class _Position(_Read):
    logprob: LogProb | None = None
    top_logprobs: list[_Candidate] | None = None


class _ChatLogprobs(_Read):
    content: list[_Position] | None = None


class _CompletionLogprobs(_Read):
    token_logprobs: list[LogProb | None] | None = None
    top_logprobs: list[dict[str, LogProb] | None] | None = None


class _Message(_Read):
    content: Text | None = None
    reasoning: Text | None = None
    reasoning_content: Text | None = None


class _Usage(_Read):
    prompt_tokens: Count | None = None
    completion_tokens: Count | None = None


class _ChatChoice(_Read):
    index: Count = 0
    message: _Message
    finish_reason: Reason | None = None
    logprobs: _ChatLogprobs | None = None


class _CompletionChoice(_Read):
    index: Count = 0
    text: Text | None = None
    finish_reason: Reason | None = None
    logprobs: _CompletionLogprobs | None = None


class _ChatChunkChoice(_Read):
    index: Count = 0
    delta: _Message | None = None
    finish_reason: Reason | None = None
    logprobs: _ChatLogprobs | None = None


Choice = TypeVar("Choice", bound=_Read)


class _Reply(_Read, Generic[Choice]):
    choices: Annotated[list[Choice], Field(min_length=1)]
    usage: _Usage | None = None


class _Chunk(_Read, Generic[Choice]):
    choices: list[Choice] | None = None
    usage: _Usage | None = None


def _error_of(data: Any) -> str | None:
    """The message of an error object (``{"error": ...}``, or vLLM's ``{"object": "error", "message": ...}``)."""
    if not isinstance(data, dict) or data.get("choices"):
        return None
    if "error" in data:
        error = data["error"]
        message = error.get("message") if isinstance(error, dict) else error
    elif data.get("object") == "error":
        message = data.get("message")
    else:
        return None
    return storable(str(message))[:QUOTED]


def _checked(model: type[BaseModel], data: Any, what: str) -> dict[str, Any]:
    error = _error_of(data)
    if error is not None:
        raise UnusableReply(f"the endpoint sent an error instead of {what}: {error}")
    if not isinstance(data, dict):
        raise UnusableReply(f"the reply is not {what} but a JSON {type(data).__name__}: {str(data)[:QUOTED]!r}")
    try:
        return model.model_validate(data).model_dump()
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "the reply"
        raise UnusableReply(f"the reply is not {what}: {where}: {first['msg']}") from None


def chat_reply(data: Any) -> dict[str, Any]:
    """`data` checked as a chat completion."""
    return _checked(_Reply[_ChatChoice], data, "a chat completion")


def completion_reply(data: Any) -> dict[str, Any]:
    """`data` checked as a completion."""
    return _checked(_Reply[_CompletionChoice], data, "a completion")


def chunk(data: Any, chat: bool) -> dict[str, Any]:
    """`data` checked as a streamed chunk of a chat completion (`chat`) or of a completion."""
    model = _Chunk[_ChatChunkChoice] if chat else _Chunk[_CompletionChoice]
    return _checked(model, data, "a streamed chunk")
