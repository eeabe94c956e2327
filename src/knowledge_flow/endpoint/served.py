"""What the endpoint serves: the model's context length, its tokenizer, and its chat template's generation prompt.

- Context: vLLM's ``GET /v1/models`` reports ``max_model_len``; other servers may not (then no budget is
  fitted to the context, and a request that does not fit is refused by the server and recorded as failed).
- Token counts: vLLM's ``POST /tokenize`` (text, or chat messages rendered with the served chat template);
  llama.cpp's ``POST /extras/tokenize`` and ``/extras/tokenize/count`` (text only). Counts are cached. For a
  server with neither, the offline estimate is used and the run says so (`ServedModel.token_counting`).
- Thinking: whether the chat template's generation prompt opens a thinking block (``<think>`` without
  ``</think>``, as Qwen3-Thinking templates do). A prefill for such a model must be appended to the rendered
  prompt's token ids and sent to ``/v1/completions``: through the chat API it would land after an empty,
  closed think block, with thinking switched off.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeGuard

import httpx
import openai

from knowledge_flow.endpoint.bounds import EXTRAS_BYTES, Bounds, UnusableReply, read_json
from knowledge_flow.endpoint.client import client_for
from knowledge_flow.endpoint.replicas import ReplicaPool, get_pool
from knowledge_flow.endpoint.secrets import scrub
from knowledge_flow.endpoint.urls import address
from knowledge_flow.text.tokens import estimate_tokens

ServerKind = Literal["vllm", "llama.cpp", "other"]
THINK_START, THINK_END = "<think>", "</think>"
_CACHE_SIZE = 65536


@dataclass(frozen=True)
class ServedModel:
    name: str
    """The model id as the server reports it."""
    context: int | None
    """The served context length (``max_model_len``), when the server reports it."""
    server: ServerKind

    @property
    def token_counting(self) -> str:
        return {"vllm": "served (vLLM /tokenize)", "llama.cpp": "served (llama.cpp /extras/tokenize)"}.get(
            self.server, "offline estimate (the server has no tokenize endpoint)"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "context": self.context,
            "server": self.server,
            "token_counting": self.token_counting,
        }


#: The longest model name kept from ``/v1/models``.
MAX_NAME = 256


def _is_count(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _tokens(reply: Any) -> list[int]:
    """The token ids of a tokenizer reply; `UnusableReply` when it has none."""
    value = reply.get("tokens") if isinstance(reply, dict) else None
    if isinstance(value, list) and all(_is_count(t) for t in value):
        return value
    raise UnusableReply("the endpoint's tokenizer reply has no list of token ids")


def _count(reply: Any) -> int:
    """The token count of a tokenizer reply; `UnusableReply` when it has none."""
    value = reply.get("count") if isinstance(reply, dict) else None
    if _is_count(value):
        return value
    raise UnusableReply("the endpoint's tokenizer reply has no token count")


class Served:
    """The extras of one model on one endpoint (a set of replicas serving the same model)."""

    def __init__(self, pool: ReplicaPool, api_key: str, model: str, *, timeout: float, max_retries: int) -> None:
        self.pool = pool
        self.api_key = api_key
        self.secrets = (api_key, *(secret for r in pool.replicas for secret in address(r.url).secrets))
        self.model = model
        self.timeout = min(timeout, 300.0)
        self.max_retries = max_retries
        self._lock = threading.Lock()
        self._info: ServedModel | None = None
        self._counts: OrderedDict[str, int] = OrderedDict()
        self._opens_thinking: bool | None = None

    # requests ------------------------------------------------------------------------------------------
    def _read(self, response: httpx.Response) -> Any:
        try:
            return read_json(response, Bounds(EXTRAS_BYTES, self.timeout))
        finally:
            response.close()

    def _post(self, path: str, body: Mapping[str, Any]) -> Any:
        def on(url: str) -> Any:
            client = client_for(url, self.api_key, timeout=self.timeout, max_retries=self.max_retries, root=True)
            return self._read(client.post(path, cast_to=httpx.Response, body=dict(body), stream=True))

        return self.pool.call(on)

    def _models(self) -> list[dict[str, Any]]:
        """The entries of ``/v1/models`` (none when its reply is not a model list)."""

        def on(url: str) -> list[dict[str, Any]]:
            client = client_for(url, self.api_key, timeout=self.timeout, max_retries=self.max_retries)
            try:
                reply = self._read(client.get("/models", cast_to=httpx.Response, stream=True))
            except UnusableReply:
                return []
            data = reply.get("data") if isinstance(reply, dict) else None
            return [entry for entry in data if isinstance(entry, dict)] if isinstance(data, list) else []

        return self.pool.call(on)

    # what is served ------------------------------------------------------------------------------------
    def info(self) -> ServedModel:
        with self._lock:
            if self._info is not None:
                return self._info
        models = self._models()
        entry = next((m for m in models if m.get("id") == self.model), models[0] if len(models) == 1 else {})
        context = entry.get("max_model_len")
        server = self._probe_server()
        name = entry.get("id")
        info = ServedModel(
            name=scrub(name, self.secrets)[:MAX_NAME] if isinstance(name, str) and name else self.model,
            context=context if _is_count(context) and context > 0 else None,
            server=server,
        )
        with self._lock:
            self._info = info
        return info

    def _probe_server(self) -> ServerKind:
        for kind, path, body in (
            ("vllm", "/tokenize", {"model": self.model, "prompt": "probe", "add_special_tokens": False}),
            ("llama.cpp", "/extras/tokenize/count", {"input": "probe"}),
        ):
            try:
                reply = self._post(path, body)
            except (openai.NotFoundError, openai.UnprocessableEntityError, openai.BadRequestError, UnusableReply):
                continue
            except openai.APIStatusError as exc:
                if exc.status_code in (404, 405):
                    continue
                raise
            if isinstance(reply, dict) and isinstance(reply.get("count", reply.get("tokens")), int | list):
                return kind  # type: ignore[return-value]
        return "other"

    # token counts (TokenCounter) -----------------------------------------------------------------------
    @property
    def exact(self) -> bool:
        return self.info().server != "other"

    def count(self, text: str) -> int:
        """Tokens of `text` in the served tokenizer (no special tokens added); cached."""
        if not text:
            return 0
        server = self.info().server
        if server == "other":
            return estimate_tokens(text)
        key = hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()
        with self._lock:
            if key in self._counts:
                self._counts.move_to_end(key)
                return self._counts[key]
        if server == "vllm":
            reply = self._post("/tokenize", {"model": self.model, "prompt": text, "add_special_tokens": False})
        else:
            reply = self._post("/extras/tokenize/count", {"input": text})
        count = _count(reply)
        with self._lock:
            self._counts[key] = count
            while len(self._counts) > _CACHE_SIZE:
                self._counts.popitem(last=False)
        return count

    def text_ids(self, text: str) -> list[int]:
        """Token ids of `text` (no special tokens); vLLM only."""
        reply = self._post("/tokenize", {"model": self.model, "prompt": text, "add_special_tokens": False})
        return _tokens(reply)

    def chat_ids(self, messages: Sequence[Mapping[str, str]], *, continue_final: bool = False) -> list[int] | None:
        """Token ids of `messages` rendered with the served chat template (with the generation prompt, or
        continuing the final message); None when the server cannot render chats."""
        if self.info().server != "vllm":
            return None
        body: dict[str, Any] = {"model": self.model, "messages": [dict(m) for m in messages]}
        body |= (
            {"add_generation_prompt": False, "continue_final_message": True}
            if continue_final
            else {"add_generation_prompt": True}
        )
        return _tokens(self._post("/tokenize", body))

    def opens_thinking(self) -> bool:
        """Whether the chat template's generation prompt leaves a thinking block open."""
        with self._lock:
            if self._opens_thinking is not None:
                return self._opens_thinking
        opens = False
        if self.info().server == "vllm":
            probe = [{"role": "user", "content": "x"}]
            with_prompt = self.chat_ids(probe) or []
            body = {"model": self.model, "messages": probe, "add_generation_prompt": False}
            without = _tokens(self._post("/tokenize", body))
            tail = with_prompt[len(without) :] if with_prompt[: len(without)] == without else with_prompt[-8:]
            reply = self._post("/detokenize", {"model": self.model, "tokens": tail})
            text = str(reply.get("prompt", "")) if isinstance(reply, dict) else ""
            opens = THINK_START in text and THINK_END not in text[text.rfind(THINK_START) :]
        with self._lock:
            self._opens_thinking = opens
        return opens


_SERVED: dict[tuple[str, ...], Served] = {}
_SERVED_LOCK = threading.Lock()


def get_served(base_url: str, api_key: str, model: str, *, timeout: float = 300.0, max_retries: int = 6) -> Served:
    """One `Served` per endpoint, key and model in a process (its caches are shared by every thread)."""
    pool = get_pool(base_url)
    key = (*[r.url for r in pool.replicas], api_key, model)
    with _SERVED_LOCK:
        served = _SERVED.get(key)
        if served is None:
            served = Served(pool, api_key, model, timeout=timeout, max_retries=max_retries)
            _SERVED[key] = served
        return served
