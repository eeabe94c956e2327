from __future__ import annotations

import pytest

from knowledge_flow.params import resolve_params
from knowledge_flow.prompts import load_prompt_set


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KFLOW_MODEL", raising=False)
    params = resolve_params({})
    assert params["iterations"] == 64
    assert params["temperature"] == 0.6
    assert params["strategy"] == "knowledge-flow"
    assert params["answer_type"] == "integer"
    assert params["model"] == "qwen2.5-coder-0.5b-instruct"
    assert params["prompts"] == "kf-instruct" and params["prompt_set"] == "kf-instruct"
    assert params["prompt_hash"] == load_prompt_set("kf-instruct").digest
    # every sampling parameter is explicit: servers fill omitted ones with their own defaults
    assert (params["top_p"], params["top_k"], params["min_p"], params["repetition_penalty"]) == (1.0, -1, 0.0, 1.0)
    assert params["avoid_budget_tokens"] is None  # the prompt set's rule


@pytest.mark.parametrize(
    ("model", "family", "prompt_set", "effort"),
    [
        ("openai/gpt-oss-120b", "gpt-oss", "kf-gpt-oss", "high"),
        ("Qwen/Qwen3-235B-A22B-Thinking-2507", "qwen3-thinking", "kf-qwen", None),
        ("Qwen/Qwen2.5-7B-Instruct", "instruct", "kf-instruct", None),
    ],
)
def test_family_picks_the_prompt_set(model: str, family: str, prompt_set: str, effort: str | None) -> None:
    params = resolve_params({"model": model})
    assert (params["model_family"], params["prompt_set"], params["reasoning_effort"]) == (family, prompt_set, effort)
    assert resolve_params({"model": model, "prompts": "kf-instruct"})["prompt_set"] == "kf-instruct"


def test_model_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KFLOW_MODEL", "openai/gpt-oss-120b")
    assert resolve_params({})["model"] == "openai/gpt-oss-120b"


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"iterations": 0}, "iterations must be between"),
        ({"iterations": -3}, "iterations must be between"),
        ({"iterations": 2.5}, "whole number"),
        ({"iterations": True}, "must be a number"),
        ({"temperature": 3}, "temperature must be between"),
        ({"strategy": "nope"}, "unknown strategy 'nope'"),
        ({"answer_type": "float"}, "answer_type must be one of"),
        ({"model": "  "}, "model must not be empty"),
        ({"max_new_tokens": 0}, "max_new_tokens must be between"),
        ({"top_k": -2}, "top_k must be between"),
        ({"min_p": 1.5}, "min_p must be between"),
        ({"repetition_penalty": 0}, "repetition_penalty must be between"),
        ({"prompts": "kf-nope"}, "unknown prompt set 'kf-nope'"),
    ],
)
def test_bad_params(given: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_params(given)


def test_model_family_detection() -> None:
    from knowledge_flow.params import detect_model_family

    assert detect_model_family("openai/gpt-oss-120b") == "gpt-oss"
    assert detect_model_family("Qwen/Qwen3-235B-A22B-Thinking-2507") == "qwen3-thinking"
    assert detect_model_family("Qwen/QwQ-32B") == "qwen3-thinking"
    assert detect_model_family("Qwen/Qwen3-8B") == "instruct"
    assert detect_model_family("qwen2.5-coder-0.5b-instruct") == "instruct"


def test_strategy_defaults() -> None:
    params = resolve_params({"model": "openai/gpt-oss-20b", "temperature": 0.7, "max_new_tokens": 1000})
    assert params["reasoning_effort"] == "high"
    assert params["thinkers"] == 1 and params["topk_thinkers"] == 1
    assert params["min_temperature"] == params["max_temperature"] == 0.7
    assert params["avoid_budget_tokens"] is None  # the prompt set trims (kf-gpt-oss: 0.1 x max_new_tokens)
    assert params["stop_policy"] == "fixed" and params["final_answer_rule"] == "last"
    assert resolve_params({"strategy": "self-consistency"})["final_answer_rule"] == "majority:all"
    assert resolve_params({"thinkers": 4})["topk_thinkers"] == 4


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"thinkers": 0}, "thinkers must be between"),
        ({"thinkers": 2, "topk_thinkers": 3}, "cannot exceed thinkers"),
        ({"min_temperature": 1.0, "max_temperature": 0.5}, "cannot exceed max_temperature"),
        ({"stop_policy": "sometimes"}, "stop policy"),
        ({"final_answer_rule": "best"}, "final answer rule"),
        ({"model_family": "llama"}, "model_family must be one of"),
        ({"reasoning_effort": "max"}, "reasoning_effort must be one of"),
        ({"uncertainty_threshold": 0.5}, "uncertainty_threshold must be between"),
    ],
)
def test_bad_strategy_params(given: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_params(given)


def test_every_run_option_is_an_ephemeral_input() -> None:
    """Options given as input are read once by `prepare`; no later checkpoint or run carries them."""
    from typing import get_type_hints

    from langgraph.channels import EphemeralValue

    from knowledge_flow.graph import builder
    from knowledge_flow.options import OPTION_NAMES
    from knowledge_flow.state import InputState, RunParams

    assert set(get_type_hints(InputState)) - {"problem"} == set(OPTION_NAMES)
    assert all(isinstance(builder.channels[key], EphemeralValue) for key in OPTION_NAMES)
    # the resolved parameters the nodes read hold every option (and what is derived from them)
    assert set(OPTION_NAMES) <= set(get_type_hints(RunParams))
