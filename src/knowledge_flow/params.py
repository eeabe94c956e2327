"""Run parameters: defaults and validation (shared by the graph's `prepare` node and the CLI)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, get_args

from knowledge_flow.prompts import PROMPT_VERSION
from knowledge_flow.state import AnswerType, RunParams

LOCAL_MODEL_ALIAS = "qwen2.5-coder-0.5b-instruct"

#: The original method runs 64 rollouts (`reflex_size`) at temperature 0.6.
DEFAULT_ITERATIONS = 64
DEFAULT_TEMPERATURE = 0.6
DEFAULT_TOP_P = 1.0
#: Small enough for the embedded CPU model; raise it for reasoning models (131072 for gpt-oss).
DEFAULT_MAX_NEW_TOKENS = 512
DEFAULT_STRATEGY = "knowledge-flow"
DEFAULT_KNOWLEDGE_BUDGET = 8192
MAX_ITERATIONS = 10_000

PARAM_KEYS: tuple[str, ...] = (
    "model",
    "iterations",
    "temperature",
    "top_p",
    "max_new_tokens",
    "strategy",
    "answer_type",
    "knowledge_budget_tokens",
    "prefill",
)


def default_model() -> str:
    return os.environ.get("KFLOW_MODEL") or LOCAL_MODEL_ALIAS


def _number(name: str, value: Any, kind: type[int] | type[float], low: float, high: float) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if kind is int and (not isinstance(value, int) and not float(value).is_integer()):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low:g} and {high:g}, got {value!r}")
    return kind(value)


def resolve_params(given: Mapping[str, Any]) -> RunParams:
    """Fill defaults and validate. Raises ValueError with a message meant for the user."""
    from knowledge_flow.strategies import get_strategy

    def pick(key: str, default: Any) -> Any:
        value = given.get(key)
        return default if value is None else value

    answer_type = pick("answer_type", "integer")
    if answer_type not in get_args(AnswerType):
        raise ValueError(f"answer_type must be one of {', '.join(get_args(AnswerType))}, got {answer_type!r}")
    strategy = str(pick("strategy", DEFAULT_STRATEGY))
    get_strategy(strategy)
    model = str(pick("model", default_model())).strip()
    if not model:
        raise ValueError("model must not be empty")
    prefill = given.get("prefill")
    if prefill is not None and not isinstance(prefill, str):
        raise ValueError("prefill must be a string")
    return RunParams(
        model=model,
        iterations=_number("iterations", pick("iterations", DEFAULT_ITERATIONS), int, 1, MAX_ITERATIONS),
        temperature=_number("temperature", pick("temperature", DEFAULT_TEMPERATURE), float, 0.0, 2.0),
        top_p=_number("top_p", pick("top_p", DEFAULT_TOP_P), float, 0.0, 1.0),
        max_new_tokens=_number("max_new_tokens", pick("max_new_tokens", DEFAULT_MAX_NEW_TOKENS), int, 1, 10**7),
        strategy=strategy,
        answer_type=answer_type,
        knowledge_budget_tokens=_number(
            "knowledge_budget_tokens", pick("knowledge_budget_tokens", DEFAULT_KNOWLEDGE_BUDGET), int, 0, 10**7
        ),
        prefill=prefill or None,
        prompt_version=PROMPT_VERSION,
    )


def recursion_limit(iterations: int) -> int:
    """Graph steps a run of `iterations` rollouts takes (prepare + 4 per rollout), with slack."""
    return 4 * iterations + 16
