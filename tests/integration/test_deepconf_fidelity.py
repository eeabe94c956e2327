"""DeepConf as its reference implementation runs it, against the scripted server: the trace budget sent
exactly, consensus checked per trace (the server sees the running streams closed), the report's re-votes from
the stored traces, the reference's final answer (`majority-traces`), the inactive-filter notice, and the
presets in `--help`."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from knowledge_flow.figures import deepconf_traces
from knowledge_flow.persistence import get_store
from knowledge_flow.persistence.store import RolloutRow
from knowledge_flow.strategies.thinkers import spread
from tests.conftest import run_kflow
from tests.integration.strategy_support import run_recorded
from tests.integration.test_deepconf import trace
from tests.support.scripted_server import Reply, Request, ScriptedServer

P1, P2 = "Problem one: compute the first value.", "Problem two: compute the second value."


class Script:
    """Per problem, its waves of replies: the thinkers of a wave go out concurrently, each at its own
    temperature (spread as `solve` spreads them), so a request's temperature says which reply it gets."""

    def __init__(self, waves: dict[str, list[list[Reply]]], low: float = 0.2, high: float = 0.6) -> None:
        self.replies: dict[tuple[str, float], list[Reply]] = {}
        for key, script in waves.items():
            for wave in script:
                for temperature, reply in zip(spread(low, high, len(wave)), wave, strict=True):
                    self.replies.setdefault((key, temperature), []).append(reply)
        self.lock = threading.Lock()

    def __call__(self, request: Request) -> Reply:
        with self.lock:
            return self.replies[(request.key, round(float(request.body["temperature"]), 4))].pop(0)


def dataset(tmp_path: Path, gold: dict[str, str]) -> Path:
    path = tmp_path / "set.jsonl"
    path.write_text(
        "".join(json.dumps({"id": f"p{i}", "problem": p, "answer": a}) + "\n" for i, (p, a) in enumerate(gold.items()))
    )
    return path


def eval_deepconf(server: ScriptedServer, tmp_path: Path, data: Path, run_id: str, *extra: str) -> Any:
    return run_kflow(
        [
            "eval",
            "--dataset",
            str(data),
            "--strategy",
            "deepconf",
            "--model",
            "scripted-model",
            "--base-url",
            server.base_url,
            "--db",
            str(tmp_path / "dc.db"),
            "--output-dir",
            str(tmp_path / "results"),
            "--eval-id",
            run_id,
            "--json",
            "--warmup-traces",
            "3",
            "--thinkers",
            "3",
            "--min-temperature",
            "0.2",
            "--max-temperature",
            "0.6",
            "--top-logprobs",
            "3",
            "--confidence-window",
            "4",
            "--max-new-tokens",
            "64",
            *extra,
        ]
    )


#: Three thinkers at temperatures 0.2, 0.4, 0.6 (which tell their replies apart), k = 3, windows of 4 tokens, and
#: a threshold no warm-up trace is below (keep 100: the lowest warm-up trace sets it).
SMALL: dict[str, Any] = {
    "strategy": "deepconf",
    "thinkers": 3,
    "min_temperature": 0.2,
    "max_temperature": 0.6,
    "top_logprobs": 3,
    "confidence_window": 4,
    "confidence_keep": 100,
}


def wave_rows(db: Path, run_id: str) -> list[list[RolloutRow]]:
    rows = get_store(db).rollouts(run_id)
    waves: list[list[RolloutRow]] = []
    for row in rows:
        while len(waves) <= row.iteration:
            waves.append([])
        waves[row.iteration].append(row)
    return waves


# P1 (gold 5): the confidence-weighted vote over every trace says 5 after each wave, while the waves' own
# winners are 5, 7, 7 (a majority over them would say 7 from wave 1 on). P2 (gold 3): every trace says 4.
WAVES = {
    P1: [
        [trace("5", [20.0] * 6), trace("7", [2.0] * 6), trace("7", [2.0] * 6)],
        [trace("7", [6.0] * 6), trace("7", [6.0] * 6), trace("5", [2.0] * 6)],
        [trace("7", [3.0] * 6)],
    ],
    P2: [[trace("4", [5.0] * 6)] * 3, [trace("4", [5.0] * 6)] * 3, [trace("4", [5.0] * 6)]],
}


def test_trace_budget_is_exact_and_the_report_revotes_from_the_traces(
    scripted: type[ScriptedServer], tmp_path: Path
) -> None:
    server = scripted(Script(WAVES), keys=[P1, P2]).start()
    data = dataset(tmp_path, {P1: "5", P2: "3"})
    # 7 traces: a warm-up of 3, a wave of 3, and a last wave trimmed to 1; keep 100: nothing is below the
    # threshold (the lowest warm-up trace sets it); fixed: the whole budget
    proc = eval_deepconf(
        server, tmp_path, data, "dc", "--trace-budget", "7", "--stop-policy", "fixed", "--confidence-keep", "100"
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert [r.key for r in server.requests].count(P1) == 7 and [r.key for r in server.requests].count(P2) == 7
    db = tmp_path / "dc.db"
    from knowledge_flow.evaluation.rows import EvalStore

    store = get_store(db)
    row = EvalStore(store).require_eval("dc")
    assert (row.manifest["params"]["trace_budget"], row.manifest["params"]["iterations"]) == (7, 3)
    items = {item.problem: item for item in EvalStore(store).eval_items("dc")}
    for item in items.values():
        assert [len(wave) for wave in wave_rows(db, item.run_id or "")] == [3, 3, 1]
        assert deepconf_traces(store, item.run_id or "")["budget"] == 7
    one = items[P1]
    assert one.answers == ["5", "7", "7"] and one.final_answer == "5" and one.final_correct
    assert not items[P2].final_correct

    # the answer after each wave, re-voted from the stored traces: 5, 5, 5 for P1 (4 for P2)
    assert [f["final_accuracy"] for f in result["per_iteration"]] == [0.5, 0.5, 0.5]
    assert result["final_accuracy"] == 0.5
    for rule in ("last-boxed", "paper"):
        report = run_kflow(
            ["report", "dc", "--db", str(db), "--json", "--out", str(tmp_path / "plots"), "--answer-rule", rule]
        )
        assert report.returncode == 0, report.stderr
        regraded = json.loads(report.stdout)
        # every trace's answer read again, the final answers voted again: the run's own
        assert [f["final_accuracy"] for f in regraded["per_iteration"]] == [0.5, 0.5, 0.5]
        assert regraded["final_accuracy"] == 0.5
    # --compare pairs the runs with the same grades
    compared = run_kflow(
        ["report", "dc", "--compare", "dc", "--db", str(db), "--json", "--out", str(tmp_path / "plots")]
    )
    assert compared.returncode == 0, compared.stderr
    comparison = json.loads(compared.stdout)["comparison"]
    assert [c["accuracy"] for c in comparison] == [0.5, 0.5]

    # a problem whose traces are gone cannot be re-voted: the store is named damaged (which run, which
    # iteration), nothing is graded by another rule and no figure is written
    with store.session() as session:
        session.query(RolloutRow).filter(RolloutRow.run_id == one.run_id, RolloutRow.iteration == 1).delete()
    refused = run_kflow(["report", "dc", "--db", str(db), "--out", str(tmp_path / "refused")])
    assert refused.returncode == 1 and refused.stdout == ""
    assert "is damaged" in refused.stderr and f"(run {(one.run_id or '')[:12]})" in refused.stderr
    assert "the rollouts of iteration 1 are missing" in refused.stderr
    assert not (tmp_path / "refused").exists()


def test_majority_traces_is_the_reference_final_answer(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    """The reference reports the plain majority over its voting traces: warm-up traces at or above the
    threshold and final traces not stopped, each with an answer (`Counter.most_common`)."""
    server = scripted(Script({P1: WAVES[P1]}), keys=[P1]).start()
    final, _ = run_recorded(
        server,
        tmp_path / "m.db",
        problem=P1,
        **SMALL,
        warmup_traces=3,
        trace_budget=7,
        stop_policy="fixed",
        final_answer_rule="majority-traces",
    )
    store = get_store(tmp_path / "m.db")
    rows = store.rollouts(final["run_id"])
    threshold = store.get_run(final["run_id"]).confidence_threshold  # type: ignore[union-attr]
    voting = [
        r.answer
        for r in rows
        if r.answer and r.error is None and r.stop_reason != "gconf_threshold" and (r.conf_lowest or 0) >= threshold
    ]
    reference = Counter(voting).most_common(1)[0][0]
    assert final["final_answer"] == reference == "7"  # 7 has 5 traces, 5 has 2 (the weighted vote says 5)
    vote = deepconf_traces(store, final["run_id"])["vote"]
    assert vote["measure"] is None and vote["weights"] == {"5": 2.0, "7": 5.0}


def test_consensus_cancels_the_streams_still_running(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    """Consensus is checked as each trace finishes: once the two fast traces of wave 1 make it, the slow one
    still streaming is closed (the server sees the client go), stored as consensus_cancelled with the tokens
    it received, and does not vote."""
    slow = trace("7", [10.0] * 300, delay=0.05)  # 15 s if nobody stops it
    streaming = threading.Event()  # the fast traces answer once the slow one is streaming
    fast = [trace("5", [10.0] * 6), trace("5", [10.0] * 6)]
    for reply in fast:
        reply.hold = streaming
    waves = {
        "default": [
            [trace("5", [5.0] * 6), trace("7", [2.0] * 6)],  # 5/7 of the vote: go on
            [*fast, slow],  # 15/17, then 25/27 >= 0.9
        ]
    }
    script = Script(waves)

    def respond(request: Request) -> Reply:
        reply = script(request)
        if reply is slow:
            streaming.set()
        return reply

    server = scripted(respond).start()
    db = tmp_path / "c.db"
    final, _ = run_recorded(
        server,
        db,
        **SMALL,
        warmup_traces=2,
        trace_budget=11,
        stop_policy="consensus:0.9",
    )
    assert final["final_answer"] == "5" and final["stopped_early"]
    assert len(server.requests) == 5  # warm-up 2, wave 1 of 3: no third wave
    # the server notices the close before its next token (0.05 s); had nobody closed it, it would end in 15 s
    slow_request = next(r for r in server.requests if r.tokens_total == 300)
    deadline = time.monotonic() + 10
    while slow_request.ended is None and time.monotonic() < deadline:
        time.sleep(0.02)
    closed = [r for r in server.requests if r.closed_by_client]
    assert closed == [slow_request] and slow_request.tokens_sent < slow_request.tokens_total
    rows = {r.id.split(":", 1)[1]: r for r in get_store(db).rollouts(final["run_id"])}
    cancelled = rows["1:2"]
    assert (cancelled.stop_reason, cancelled.finish_reason) == ("consensus_cancelled", "cancelled")
    assert 1 <= cancelled.completion_tokens <= closed[0].tokens_sent
    assert cancelled.finish_order == 4  # it ended last: the warm-up 0 and 1, the fast ones 2 and 3
    assert sorted(r.finish_order for r in rows.values()) == [0, 1, 2, 3, 4]
    counted = [t["rollout_id"].split(":", 1)[1] for t in final["traces"] if t["counted"]]
    assert counted == ["0:0", "0:1", "1:0", "1:1"]
    shown = run_kflow(["show", "s", "--db", str(db)], env={"COLUMNS": "300"}).stdout
    assert "cancelled (consensus_cancelled)" in shown and "1 cancelled at consensus" in shown
    figures = deepconf_traces(get_store(db), final["run_id"])
    assert figures["consensus_cancelled"] == 1 and figures["tokens"]["paid_by_cancelled"] == cancelled.completion_tokens
    assert figures["vote"]["weights"] == {"5": pytest.approx(25.0), "7": pytest.approx(2.0)}


def test_an_inactive_online_filter_is_said_once_and_recorded(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    server = scripted(lambda _r: trace("3", [4.0] * 8)).start()
    db = tmp_path / "i.db"
    args = ["solve", "What is 1 + 2?", "--strategy", "deepconf", "--base-url", server.base_url, "--db", str(db)]
    args += ["--model", "scripted-model", "--warmup-traces", "2", "--thinkers", "2", "--trace-budget", "6"]
    args += ["--stop-policy", "fixed"]
    proc = run_kflow([*args, "--max-new-tokens", "100", "--thread-id", "t"])
    assert proc.returncode == 0, proc.stderr
    assert len(server.requests) == 6
    assert all(r.body["max_tokens"] == 100 for r in server.requests)  # deepconf's 64000 gave way to the user's
    assert proc.stderr.count("online filter inactive") == 1  # three waves, one notice
    assert "less than one confidence window of 2048" in proc.stderr
    shown = run_kflow(["show", "t", "--db", str(db), "--json"])
    assert json.loads(shown.stdout)["deepconf"]["online_filter"] == "inactive (budget 100 < window 2048)"
    text = run_kflow(["show", "t", "--db", str(db)], env={"COLUMNS": "300"}).stdout
    assert "online filter inactive (budget 100 < window 2048)" in text
    # deepconf's own budget is far above a window: no notice
    quiet = run_kflow([*args, "--thread-id", "u", "--max-new-tokens", "4096"])
    assert quiet.returncode == 0 and "online filter inactive" not in quiet.stderr


def test_help_names_the_presets() -> None:
    proc = run_kflow(["solve", "--help"], env={"COLUMNS": "400"})
    assert proc.returncode == 0
    line = next(line for line in proc.stdout.splitlines() if "--confidence-keep" in line)
    assert "90 is DeepConf-high" in line and "10 is DeepConf-low" in line
    assert "[default: 512; deepconf: 64000]" in proc.stdout and "[default: none; deepconf: 256]" in proc.stdout
