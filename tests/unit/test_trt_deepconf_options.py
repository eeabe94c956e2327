"""Run options of selection, confidence, TRT and DeepConf; schemas 5 and 6; reading TRT's JSON replies."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from knowledge_flow.params import recursion_limit, resolve_params
from knowledge_flow.persistence.store import SCHEMA_VERSION, RolloutStore
from knowledge_flow.strategies.trt_replies import lesson_text, read_lesson, read_strategies
from knowledge_flow.text.json_replies import json_objects, reply_object


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
    # the reference implementation's online settings: 256 traces of up to 64000 tokens, temperature 0.6, top-p 0.95
    assert (deepconf["trace_budget"], deepconf["max_new_tokens"], deepconf["temperature"], deepconf["top_p"]) == (
        256,
        64000,
        0.6,
        0.95,
    )
    assert (kf["trace_budget"], kf["max_new_tokens"], kf["top_p"], kf["iterations"]) == (None, 512, 1.0, 64)
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


def test_explicit_values_win_over_the_strategys_defaults() -> None:
    given = {"strategy": "deepconf", "max_new_tokens": 900, "top_p": 1.0, "temperature": 0.9, "thinkers": 4}
    deepconf = resolve_params(given)
    assert (deepconf["max_new_tokens"], deepconf["top_p"], deepconf["temperature"], deepconf["thinkers"]) == (
        900,
        1.0,
        0.9,
        4,
    )
    # 256 traces: 16 warm-up, then 60 waves of 4
    assert (deepconf["trace_budget"], deepconf["iterations"]) == (256, 61)
    assert resolve_params({"strategy": "trt", "thinkers": 3})["thinkers"] == 3


def test_trace_budget_sets_the_iterations() -> None:
    # 100 traces: 16 warm-up, then 5 waves of 16 and a last one of 4
    budget = resolve_params({"strategy": "deepconf", "trace_budget": 100})
    assert (budget["iterations"], budget["trace_budget"]) == (7, 100)
    assert resolve_params({"strategy": "deepconf", "trace_budget": 16})["iterations"] == 1  # the warm-up only
    # iterations alone: whole waves, recorded as the budget they send
    waves = resolve_params({"strategy": "deepconf", "iterations": 5, "thinkers": 2, "warmup_traces": 4})
    assert (waves["iterations"], waves["trace_budget"]) == (5, 12)
    # agreeing values are accepted
    assert resolve_params({"strategy": "deepconf", "trace_budget": 100, "iterations": 7})["iterations"] == 7
    # any strategy: the paper's offline budget, 512 traces of 64 thinkers
    offline = resolve_params({"strategy": "self-consistency", "thinkers": 64, "trace_budget": 512})
    assert (offline["iterations"], offline["trace_budget"]) == (8, 512)
    assert resolve_params({"strategy": "self-consistency", "iterations": 3})["trace_budget"] is None


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"strategy": "deepconf", "trace_budget": 100, "iterations": 3}, "give trace_budget or iterations"),
        ({"strategy": "deepconf", "trace_budget": 8}, r"trace_budget \(8\) is below the first wave's 16 traces"),
        ({"trace_budget": 0}, "trace_budget must be between"),
        ({"max_new_tokens": 0}, "max_new_tokens must be between"),
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
        assert conn.execute("SELECT value FROM kf_meta").fetchone()[0] == str(SCHEMA_VERSION) == "7"
    store.close()


def test_version_5_database_gains_the_finishing_order_and_usage_source(tmp_path: Path) -> None:
    path = tmp_path / "v5.db"
    RolloutStore(path).close()
    with sqlite3.connect(path) as conn:  # make it look like a version-5 file
        for column in ("finish_order", "usage_source"):
            conn.execute(f"ALTER TABLE kf_rollouts DROP COLUMN {column}")
        conn.execute("UPDATE kf_meta SET value = '5' WHERE key = 'schema_version'")
    RolloutStore(path).close()
    assert {"finish_order", "usage_source"} <= columns(path, "kf_rollouts")


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
