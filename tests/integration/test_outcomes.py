"""What a run reports when it does not simply finish: one JSON object with ``--json`` whatever the outcome
(status and reason), prediction files of the problems that finished when others failed, and shares computed
over the problems that finished ("N of M finished", n/a when none did), with the rollouts actually stored."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from tests.conftest import run_kflow, start_kflow
from tests.integration.scripts import PAPER_SET
from tests.integration.test_reliability import changing_answer, dataset_of, eval_cmd
from tests.support.eval_script import eval_responder
from tests.support.scripted_server import Reply, Request, ScriptedServer, kf_output

PROBLEM = "How many positive divisors does 36 have?"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def solve_args(url: str, db: Path, *extra: str) -> list[str]:
    return ["solve", PROBLEM, "--base-url", url, "--db", str(db), "--model", "m", "--prompts", PAPER_SET, *extra]


def test_json_holds_one_object_whatever_the_outcome(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}/v1"
    failed = run_kflow(solve_args(down, tmp_path / "a.db", "--json", "--thread-id", "down", "--max-retries", "0"))
    assert failed.returncode == 1
    payload = json.loads(failed.stdout)
    assert payload["status"] == "failed" and payload["thread_id"] == "down" and payload["exit_code"] == 1
    assert "failed" in payload["reason"] and "kflow resume down" in payload["reason"]

    bad = run_kflow(solve_args(down, tmp_path / "b.db", "--json", "--iterations", "0"))
    assert bad.returncode == 2 and json.loads(bad.stdout)["status"] == "error"
    assert not (tmp_path / "b.db").exists()

    missing = run_kflow(["resume", "nope", "--db", str(tmp_path / "a.db"), "--json"])
    assert missing.returncode == 2
    assert json.loads(missing.stdout) == {
        "thread_id": "nope",
        "status": "error",
        "reason": f"no run on thread 'nope' in {tmp_path / 'a.db'}",
        "exit_code": 2,
    }

    hold = threading.Event()

    def respond(request: Request) -> Reply:
        reply = Reply(content=kf_output("5", f"S{request.index}"))
        if request.index == 1:
            reply.hold = hold  # the second request hangs until the test lets it go
        return reply

    server = scripted(respond).start()
    proc = start_kflow(
        solve_args(server.base_url, tmp_path / "c.db", "--json", "--thread-id", "sig", "--iterations", "4")
    )
    deadline = time.monotonic() + 120
    while len(server.requests) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    hold.set()
    assert proc.returncode == 130, stderr
    stopped = json.loads(stdout)
    assert stopped["status"] == "stopped" and stopped["thread_id"] == "sig"
    assert stopped["reason"].startswith("SIGINT: stopped") and "kflow resume sig" in stopped["reason"]
    assert len(stdout.strip().splitlines()) == 1


def failing_problem(order: list[str], broken: set[int]) -> Any:
    """Answers that change; every request of the problems in `broken` is refused (they fail)."""
    base = eval_responder(changing_answer(order))

    def respond(request: Request) -> Reply:
        if order.index(request.key) in broken:
            return Reply(content="", status=400)
        return base(request)

    return respond


def stored(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return list(conn.execute(sql))
    finally:
        conn.close()


def test_failed_problems_leave_the_finished_ones_reported_and_written(
    scripted: type[ScriptedServer], tmp_path: Path
) -> None:
    dataset, order, _ = dataset_of(tmp_path, 3)
    server = scripted(failing_problem(order, {1}), keys=order).start()
    db = tmp_path / "f.db"
    proc = run_kflow(eval_cmd(server.base_url, dataset, db, tmp_path / "out", "part", 3))
    assert proc.returncode == 1
    result = json.loads(proc.stdout)
    assert result["finished"] == 2 and result["failed"] == 1 and result["problems"] == 3
    assert "1 problem(s) did not finish" in result["reason"] and "kflow eval --resume part" in result["reason"]
    grades = {
        p: json.loads(c)
        for p, c in stored(db, "SELECT position, correct_json FROM kf_eval_items WHERE status = 'done'")
    }
    for k, figures in enumerate(result["per_iteration"]):  # over the 2 problems that finished, not the 3
        assert figures["accuracy"] == sum(g[k] for g in grades.values()) / 2
    assert result["rollouts_done"] == stored(db, "SELECT count(*) FROM kf_rollouts")[0][0]
    folder = tmp_path / "out" / "vllm_512_knowledge-flow" / "m"
    heads = [json.loads((folder / f"predictions_{k}.json").read_text())[0] for k in range(3)]
    assert [h["total"] for h in heads] == [2, 2, 2]  # the finished problems' predictions are written
    text = run_kflow(["report", "part", "--db", str(db), "--out", str(tmp_path / "rep")])
    assert text.returncode == 0, text.stderr
    assert "shares are over the problems that finished: 2 of 3 finished" in text.stdout
    assert "(2 of 3 finished)" in text.stdout


def test_no_finished_problem_shows_n_a(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    dataset, order, _ = dataset_of(tmp_path, 2)
    server = scripted(failing_problem(order, {0, 1}), keys=order).start()
    db = tmp_path / "n.db"
    proc = run_kflow(eval_cmd(server.base_url, dataset, db, tmp_path / "out", "none", 3))
    assert proc.returncode == 1
    result = json.loads(proc.stdout)
    assert result["finished"] == 0 and result["final_accuracy"] is None
    assert all(f["accuracy"] is None and f["final_accuracy"] is None for f in result["per_iteration"])
    text = run_kflow(["report", "none", "--db", str(db), "--out", str(tmp_path / "rep")])
    assert text.returncode == 0, text.stderr
    assert "n/a" in text.stdout and "(0 of 2 finished)" in text.stdout


def test_an_interrupted_evaluation_counts_what_it_stored(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    dataset, order, _ = dataset_of(tmp_path, 6)
    slow = {key: 0.3 for key in order[2:]}
    server = scripted(eval_responder(changing_answer(order), slow), keys=order).start()
    db = tmp_path / "i.db"
    proc = start_kflow(eval_cmd(server.base_url, dataset, db, tmp_path / "out", "int", 4, "--concurrency", "3"))
    deadline = time.monotonic() + 120
    while len(server.delivered()) < 12 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    result = json.loads(stdout)
    assert result["status"] == "stopped" and result["reason"].startswith("SIGINT: stopped")
    rows = stored(db, "SELECT count(*) FROM kf_rollouts")[0][0]
    assert result["rollouts_done"] == rows > 0  # what is stored, finished problems or not
    done = {
        p: json.loads(c)
        for p, c in stored(db, "SELECT position, correct_json FROM kf_eval_items WHERE status = 'done'")
    }
    assert result["finished"] == len(done) < 6
    if done:
        assert result["per_iteration"][0]["accuracy"] == sum(g[0] for g in done.values()) / len(done)
    else:
        assert result["per_iteration"][0]["accuracy"] is None
    report = run_kflow(["report", "int", "--db", str(db), "--out", str(tmp_path / "rep"), "--json"])
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["rollouts_done"] == rows
