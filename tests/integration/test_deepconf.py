"""DeepConf against the scripted server: warm-up threshold, traces stopped mid-stream by the client (seen
from the server side), the confidence-weighted vote, consensus stop, and the measures as a final-answer rule
and thinker score for other strategies."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from knowledge_flow.figures import deepconf_traces, run_figures, totals, trace_votes
from knowledge_flow.persistence import get_store
from knowledge_flow.strategies.policies import final_answer
from tests.conftest import run_kflow
from tests.integration.strategy_support import run_recorded
from tests.support.scripted_server import Reply, Request, ScriptedServer


def trace(answer: str, confidences: list[float], delay: float = 0.0) -> Reply:
    """A trace whose token i has confidence confidences[i] (three top candidates at -C each); the boxed
    answer is its last token."""
    words = [f"w{i}" for i in range(len(confidences) - 1)] + [f"\\boxed{{{answer}}}"]
    return Reply(content=" ".join(words), top_logprobs=[[-c] * 3 for c in confidences], token_delay_s=delay)


class ByTemperature:
    """Each temperature's replies in order (thinkers of a wave have distinct temperatures)."""

    def __init__(self, replies: dict[float, list[Reply]]) -> None:
        self.replies = replies
        self.lock = threading.Lock()

    def __call__(self, request: Request) -> Reply:
        with self.lock:
            return self.replies[round(float(request.body["temperature"]), 4)].pop(0)


def test_online_filter_stops_a_stream_and_the_vote_decides(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    replies = {
        # the warm-up wave: lowest group confidences 10, 8, 4, 2
        0.1: [trace("5", [10.0] * 12), trace("5", [9.0] * 12), trace("5", [9.0] * 12)],
        0.2: [trace("5", [8.0] * 12)],
        0.3: [trace("7", [4.0] * 12)],
        0.4: [
            trace("5", [2.0] * 12),
            # wave 1: confident for 6 tokens, then not: stopped once a window of 4 is below the threshold
            trace("7", [9.0] * 6 + [1.0] * 30, delay=0.02),
            trace("5", [9.0] * 12),
        ],
    }
    server = scripted(ByTemperature(replies)).start()
    db = tmp_path / "dc.db"
    final, steps = run_recorded(
        server,
        db,
        strategy="deepconf",
        warmup_traces=4,
        thinkers=2,
        iterations=5,
        min_temperature=0.1,
        max_temperature=0.4,
        top_logprobs=3,
        confidence_window=4,
        stop_policy="consensus:0.91",
    )
    # threshold: the 10th percentile of [2, 4, 8, 10] = 2 + 0.3 * 2
    assert steps[0]["confidence_threshold"] == pytest.approx(2.6)
    bodies = [r.body for r in server.requests]
    assert all(b["stream"] and b["stream_options"] == {"include_usage": True} for b in bodies)
    # k = 3: one more candidate is asked for, so that the exact top 3 is always among them
    assert all(b["logprobs"] is True and b["top_logprobs"] == 4 and b.get("n", 1) == 1 for b in bodies)
    assert len(server.requests) == 8  # 4 warm-up + 2 waves of 2: consensus after wave 2

    # the server saw the client close the stream mid-way: windows 7, 5, 3, then 1 < 2.6 at token 10
    stopped = [r for r in server.requests if r.closed_by_client]
    assert len(stopped) == 1
    assert stopped[0].tokens_total == 36 and 10 <= stopped[0].tokens_sent <= 11
    assert not stopped[0].delivered
    assert all(r.delivered and r.tokens_sent == r.tokens_total for r in server.requests if r is not stopped[0])

    store = get_store(db)
    rows = {r.id.split(":", 1)[1]: r for r in store.rollouts(final["run_id"])}
    cut = rows["1:1"]
    assert (cut.stop_reason, cut.finish_reason, cut.completion_tokens, cut.answer) == (
        "gconf_threshold",
        "cancelled",
        10,
        None,
    )
    assert cut.conf_threshold == pytest.approx(2.6) and cut.conf_tokens == 10
    assert store.token_confidences(cut.id) == [9.0] * 6 + [1.0] * 4
    assert cut.prompt_tokens > 0  # counted before sending: the server sent no usage for a cut stream
    assert cut.usage_source == "received"  # no usage from this server before the close: the tokens received
    assert sorted(r.finish_order for r in rows.values()) == list(range(8))  # every trace has its place
    assert {r.finish_order for r in rows.values() if r.iteration == 0} == {0, 1, 2, 3}
    assert rows["0:3"].stop_reason == "below_threshold" and rows["0:3"].conf_threshold is None
    assert rows["0:0"].conf_lowest == pytest.approx(10.0) and rows["0:2"].conf_lowest == pytest.approx(4.0)
    assert rows["1:0"].stop_reason is None and rows["1:0"].conf_threshold == pytest.approx(2.6)

    # votes by lowest group confidence over the counted traces: 5 has 10+8+9+9+9 = 45, 7 has 4: 45/49 >= 0.91
    # (after the first trace of wave 2, 36/40 was not enough)
    assert final["final_answer"] == "5" and final["stopped_early"] and final["answers"] == ["5", "5", "5"]
    counted = [t["rollout_id"].split(":", 1)[1] for t in final["traces"] if t["counted"]]
    assert counted == ["0:0", "0:1", "0:2", "1:0", "2:0", "2:1"]
    assert steps[0]["selection"]["votes"] == {"5": pytest.approx(18.0), "7": pytest.approx(4.0)}

    figures = deepconf_traces(store, final["run_id"])
    assert figures["threshold"] == pytest.approx(2.6)
    assert (figures["traces"], figures["stopped"], figures["below_threshold"], figures["counted"]) == (8, 1, 1, 6)
    assert figures["budget"] == 4 + 2 * 4 and figures["tokens"]["not_sampled_traces"] == 4
    assert figures["tokens"]["paid_by_stopped"] == 10
    assert figures["tokens"]["saved_by_stops_estimate"] == 2  # finished traces average 12 tokens
    assert figures["tokens"]["saved_by_consensus_estimate"] == 48
    assert figures["vote"]["weights"] == {"5": pytest.approx(45.0), "7": pytest.approx(4.0)}
    assert "deepconf" in run_figures(store, final["run_id"])
    assert store.get_run(final["run_id"]).confidence_threshold == pytest.approx(2.6)  # type: ignore[union-attr]
    assert totals(store, [final["run_id"]])["deepconf"]["stopped"] == 1
    # re-grading from the store gives the run's own final answer
    votes = trace_votes(store.rollouts(final["run_id"]))
    assert [v["counted"] for v in votes] == [t["counted"] for t in final["traces"]]
    assert final_answer("conf-vote:lowest", final["answers"], "integer", votes) == "5"
    assert final_answer("conf-vote:lowest:10", final["answers"], "integer", votes) == "5"
    # `kflow show` has the same figures
    shown = run_kflow(["show", final["thread_id"], "--db", str(db), "--json"])
    assert shown.returncode == 0, shown.stderr
    payload = json.loads(shown.stdout)
    assert payload["deepconf"]["stopped"] == 1 and payload["deepconf"]["tokens"]["paid_by_stopped"] == 10
    assert [r.get("stop_reason") for r in payload["rollouts"]].count("gconf_threshold") == 1
    text = run_kflow(["show", final["thread_id"], "--db", str(db)]).stdout
    assert "DeepConf: threshold 2.6000" in text and "1 stopped (10 tokens paid)" in text


def test_without_log_probabilities_nothing_is_stopped(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    server = scripted(lambda _r: Reply(content="So \\boxed{3}")).start()
    final, steps = run_recorded(
        server, tmp_path / "n.db", strategy="deepconf", warmup_traces=2, thinkers=2, iterations=2
    )
    assert steps[0]["confidence_threshold"] is None
    assert deepconf_traces(get_store(tmp_path / "n.db"), final["run_id"])["threshold"] is None
    assert final["final_answer"] == "3" and not any(r.closed_by_client for r in server.requests)
    # a plain vote decides at once: two traces agree after the warm-up
    assert final["stopped_early"] and len(server.requests) == 2


def test_measures_as_final_answer_rule_and_thinker_score(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    """Offline DeepConf for another strategy: non-streamed requests with top log-probabilities, measures
    stored with each rollout, thinkers scored by tail confidence, the final answer by conf-vote."""
    replies = {
        0.2: [trace("5", [1.0] * 3 + [9.0] * 3), trace("7", [2.0] * 6)],
        0.6: [trace("7", [3.0] * 6), trace("7", [2.5] * 6)],
    }
    server = scripted(ByTemperature(replies)).start()
    db = tmp_path / "o.db"
    final, steps = run_recorded(
        server,
        db,
        strategy="self-consistency",
        iterations=2,
        thinkers=2,
        min_temperature=0.2,
        max_temperature=0.6,
        confidence_score="tail",
        confidence_window=3,
        final_answer_rule="conf-vote:lowest",
    )
    assert all(not r.body.get("stream") and r.body["top_logprobs"] == 21 for r in server.requests)  # k = 20, one more
    # iteration 0: tail 9 (answer 5) beats tail 3 (answer 7)
    assert final["answers"] == ["5", "7"]
    assert steps[0]["selection"]["rule"] == "confidence"
    # conf-vote by lowest over all four traces: 5 has 1, 7 has 3 + 2 + 2.5
    assert final["final_answer"] == "7"
    rows = get_store(db).rollouts(final["run_id"])
    assert [r.conf_lowest for r in rows] == pytest.approx([1.0, 3.0, 2.0, 2.5])
    assert [r.conf_tail for r in rows] == pytest.approx([9.0, 3.0, 2.0, 2.5])
    assert rows[0].conf_window == 3 and rows[0].stop_reason is None


def test_a_stream_the_server_ends_early_is_a_fault(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    """A stream that ends without a finish reason (llama.cpp's server ends one when another request arrives)
    is requested again, then stored as failed, never taken as a finished trace."""

    def respond(request: Request) -> Reply:
        reply = trace("4", [5.0] * 8)
        if float(request.body["temperature"]) > 0.5:
            reply.fault = "cut"
        return reply

    server = scripted(respond).start()
    final, _ = run_recorded(
        server,
        tmp_path / "c.db",
        strategy="deepconf",
        warmup_traces=2,
        thinkers=2,
        iterations=1,
        min_temperature=0.2,
        max_temperature=0.8,
        top_logprobs=2,
        confidence_window=4,
    )
    cut = [r for r in server.requests if float(r.body["temperature"]) > 0.5]
    assert len(cut) == 3 and all(0 < r.tokens_sent < r.tokens_total and not r.delivered for r in cut)
    rows = get_store(tmp_path / "c.db").rollouts(final["run_id"])
    assert rows[1].error is not None and "no finish reason" in rows[1].error and rows[1].content == ""
    assert rows[0].error is None and final["final_answer"] == "4"
    assert [t["counted"] for t in final["traces"]] == [True, False]
