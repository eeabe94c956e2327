"""Run options of selection, confidence, TRT and DeepConf; schema 5; reading TRT's JSON replies."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from knowledge_flow.params import recursion_limit, resolve_params
from knowledge_flow.persistence.store import SCHEMA_VERSION, RolloutStore
from knowledge_flow.strategies.trt_replies import json_objects, lesson_text, read_lesson, read_strategies, reply_object


def test_strategy_defaults() -> None:
    kf = resolve_params({})
    assert (kf["select_rule"], kf["confidence_score"], kf["top_logprobs"], kf["thinkers"]) == (
        "confidence",
        "mean-logprob",
        0,
        1,
    )
    assert (kf["confidence_window"], kf["show_reference"], kf["warmup_traces"], kf["confidence_keep"]) == (
        2048,
        False,
        16,
        90.0,
    )
    trt = resolve_params({"strategy": "trt"})
    assert (trt["thinkers"], trt["iterations"], trt["select_rule"], trt["stop_policy"]) == (2, 8, "vote", "fixed")
    assert trt["final_answer_rule"] == "last" and trt["top_logprobs"] == 0
    deepconf = resolve_params({"strategy": "deepconf"})
    assert (deepconf["thinkers"], deepconf["iterations"], deepconf["warmup_traces"]) == (16, 16, 16)
    assert (deepconf["select_rule"], deepconf["confidence_score"], deepconf["top_logprobs"]) == (
        "conf-vote",
        "lowest",
        20,
    )
    assert deepconf["stop_policy"] == "consensus:0.95" and deepconf["final_answer_rule"] == "conf-vote:lowest"
    # any strategy may use the measures: they switch on top log-probabilities
    assert resolve_params({"final_answer_rule": "conf-vote:tail:10"})["top_logprobs"] == 20
    assert resolve_params({"confidence_score": "bottom10", "top_logprobs": 5})["top_logprobs"] == 5
    assert resolve_params({"strategy": "trt", "select_rule": "verifier"})["select_rule"] == "verifier"
    assert recursion_limit(8) >= 2 + 6 * 8


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"select_rule": "best"}, "select_rule must be one of"),
        ({"select_rule": "verifier"}, "needs a strategy with a verifier prompt"),
        ({"confidence_score": "median"}, "confidence_score must be one of"),
        ({"select_rule": "conf-vote"}, "set confidence_score to one of"),
        ({"top_logprobs": 21}, "top_logprobs must be between"),
        ({"strategy": "deepconf", "top_logprobs": 0}, "need top_logprobs >= 1"),
        ({"confidence_window": 0}, "confidence_window must be between"),
        ({"show_reference": "yes"}, "show_reference must be true or false"),
        ({"warmup_traces": 0}, "warmup_traces must be between"),
        ({"confidence_keep": 0}, "confidence_keep must be between"),
        ({"confidence_keep": 101}, "confidence_keep must be between"),
        ({"stop_policy": "consensus:2"}, "stop policy"),
        ({"final_answer_rule": "conf-vote:median"}, "final answer rule"),
    ],
)
def test_bad_options(given: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_params(given)


def columns(path: Path, table: str) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def test_version_4_database_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "v4.db"
    RolloutStore(path).close()
    new = ("strategy_json", "conf_lowest", "conf_bottom10", "conf_tail", "stop_reason", "token_confidence")
    with sqlite3.connect(path) as conn:  # make it look like a version-4 file
        for column in new:
            conn.execute(f"ALTER TABLE kf_rollouts DROP COLUMN {column}")
        conn.execute("ALTER TABLE kf_runs DROP COLUMN confidence_threshold")
        conn.execute("DROP TABLE kf_calls")
        conn.execute("UPDATE kf_meta SET value = '4' WHERE key = 'schema_version'")
    store = RolloutStore(path)
    assert set(new) <= columns(path, "kf_rollouts") and "outcome_json" in columns(path, "kf_calls")
    assert "confidence_threshold" in columns(path, "kf_runs")
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM kf_meta").fetchone()[0] == str(SCHEMA_VERSION) == "6"
    store.close()


def test_reading_json_replies() -> None:
    text = 'Thinking... {"a": {"b": 1}} then ```json\n{"strategies": [{"key_technique": "X", "what_to_try": "y"}]}\n```'
    assert json_objects(text) == [{"a": {"b": 1}}, {"strategies": [{"key_technique": "X", "what_to_try": "y"}]}]
    assert reply_object(text, ("strategies",)) == json_objects(text)[1]
    assert reply_object("no json {here", ("strategies",)) is None
    hostile = "{" * 50_000 + '{"strategies": []}' + "}" * 10
    assert reply_object(hostile, ("strategies",)) is None  # bounded work; nothing usable found
    assert read_strategies([{"key_technique": " A\n b ", "what_to_try": 3}, "junk", {}], 5) == [
        {"key_technique": "A b", "what_to_try": "3"}
    ]
    assert read_strategies([{"key_technique": "A"}] * 4, 2) == [{"key_technique": "A", "what_to_try": ""}] * 2
    assert read_strategies("A", 2) is None and read_strategies([], 2) is None
    lesson = read_lesson({"pattern": "P", "when_to_use": "one sign", "observed_mistakes": ["m1", {"x": 1}, "m2"]})
    assert lesson == {"pattern": "P", "when_to_use": ["one sign"], "key_insight": "", "observed_mistakes": ["m1", "m2"]}
    assert lesson_text(lesson) == "Pattern: P\nWhen it applies: one sign\nMistakes seen: m1; m2"
    assert read_lesson(None) is None and read_lesson({"pattern": ""}) is None
    json.dumps(lesson)
