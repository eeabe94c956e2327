from __future__ import annotations

import pytest

from knowledge_flow.params import resolve_params
from knowledge_flow.prompts import PROMPT_VERSION


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KFLOW_MODEL", raising=False)
    params = resolve_params({})
    assert params["iterations"] == 64
    assert params["temperature"] == 0.6
    assert params["strategy"] == "knowledge-flow"
    assert params["answer_type"] == "integer"
    assert params["model"] == "qwen2.5-coder-0.5b-instruct"
    assert params["prompt_version"] == PROMPT_VERSION


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
    ],
)
def test_bad_params(given: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_params(given)
