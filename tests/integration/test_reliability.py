"""Reliability: crash fuzzing, endpoint faults, bad input, concurrent runs, secrets."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from tests.conftest import run_kflow, shared_dataset, start_kflow
from tests.integration.scripts import PAPER_SET
from tests.support.databases import Database
from tests.support.eval_script import eval_responder, iteration_of
from tests.support.scripted_server import Reply, Request, ScriptedServer, faulty

SECRET = "sk-reliability-SECRET-93f1"


def dataset_of(tmp_path: Path, count: int, name: str = "set.jsonl") -> tuple[Path, list[str], dict[str, int]]:
    data = [json.loads(line) for line in shared_dataset("aime_2025.jsonl").read_text().splitlines()[:count]]
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(row) for row in data))
    return path, [row["problem"] for row in data], {row["problem"]: int(row["answer"]) for row in data}


def changing_answer(order: list[str]) -> Any:
    """Answers change over the iterations, so the knowledge lists grow."""

    def answer(key: str, k: int) -> str:
        return str((order.index(key) * 7 + (k // 2) * 3) % 1000)

    return answer


def eval_cmd(
    base_url: str, dataset: Path, db: Path | str, out: Path, run_id: str, iterations: int, *extra: str
) -> list[str]:
    return [
        "eval",
        "--dataset",
        str(dataset),
        "--iterations",
        str(iterations),
        "--base-url",
        base_url,
        "--db",
        str(db),
        "--output-dir",
        str(out),
        "--run-id",
        run_id,
        "--model",
        "m",
        "--prompts",
        PAPER_SET,
        "--json",
        *extra,
    ]


def knowledge_by_thread(db: Path | Database) -> dict[str, list[Any]]:
    """The knowledge items stored per thread, in order (from the rollout store)."""
    database = db if isinstance(db, Database) else Database("sqlite", str(db))
    rows = database.rows(
        "SELECT thread_id, iteration, knowledge_added FROM kf_rollouts WHERE knowledge_added IS NOT NULL "
        "ORDER BY thread_id, iteration"
    )
    result: dict[str, list[Any]] = {}
    for thread, _, added in rows:
        result.setdefault(thread, []).append(json.loads(added))
    return result


def run_exists(database: Database) -> bool:
    if "kf_evals" not in (database.tables() if database.kind == "postgres" or database.exists() else set()):
        return False
    return bool(database.rows("SELECT count(*) FROM kf_evals")[0][0])


def stored_rollouts(database: Database) -> set[tuple[str, int]]:
    if "kf_rollouts" not in (database.tables() if database.kind == "postgres" or database.exists() else set()):
        return set()
    return {(t, i) for t, i in database.rows("SELECT thread_id, iteration FROM kf_rollouts")}


def test_crash_fuzz_random_sigkills_then_resume(
    scripted: type[ScriptedServer], tmp_path: Path, database: Database
) -> None:
    """R1: 8 problems x 6 iterations, SIGKILL at 10 seeded random moments, resume each time."""
    dataset, order, _ = dataset_of(tmp_path, 8)
    answer = changing_answer(order)
    iterations = 6

    reference_server = scripted(eval_responder(answer), keys=order).start()
    (tmp_path / "ref").mkdir()
    reference = run_kflow(
        eval_cmd(
            reference_server.base_url, dataset, tmp_path / "ref" / "e.db", tmp_path / "ref" / "out", "fuzz", iterations
        )
    )
    assert reference.returncode == 0, reference.stderr

    server = scripted(eval_responder(answer, {p: 0.01 for p in order}), keys=order).start()
    db = database.target
    rng = random.Random(20261123)
    stored_before: list[tuple[float, set[tuple[str, int]]]] = []
    for _ in range(10):
        exists = run_exists(database)
        args = (
            ["eval", "--resume", "fuzz", "--db", db, "--json"]
            if exists
            else eval_cmd(server.base_url, dataset, db, tmp_path / "out", "fuzz", iterations)
        )
        proc = start_kflow(args, output=subprocess.DEVNULL, new_session=True)
        if not exists:  # the first run: let it create the evaluation (however long start-up takes here)
            deadline = time.monotonic() + 120
            while not run_exists(database) and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
        time.sleep(rng.uniform(1.5, 4.5))  # start-up takes ~2 s: the kills land anywhere in the run
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        stored_before.append((time.monotonic(), stored_rollouts(database)))
    final = run_kflow(["eval", "--resume", "fuzz", "--db", db, "--json"])
    assert final.returncode == 0, final.stderr
    after, before = json.loads(final.stdout), json.loads(reference.stdout)
    for key in ("per_iteration", "final_accuracy", "problems", "finished", "total_tokens"):
        assert after[key] == before[key], key
    assert knowledge_by_thread(database) == knowledge_by_thread(tmp_path / "ref" / "e.db")  # same threads, items
    assert knowledge_by_thread(database)

    # nothing stored before a kill was requested again after it
    for killed_at, stored in stored_before:
        later = {
            (f"fuzz:{order.index(r.key)}", iteration_of(r.prompt)) for r in server.requests if r.started > killed_at
        }
        assert not (later & stored)
    if database.kind == "sqlite":
        assert database.rows("PRAGMA integrity_check")[0][0] == "ok"


def test_endpoint_faults_complete_and_are_counted(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    """R2: 20% of requests fail in every way; the run completes; failures never corrupt knowledge."""
    dataset, order, _ = dataset_of(tmp_path, 8)
    answer = changing_answer(order)
    server = scripted(faulty(eval_responder(answer), 0.2, seed=7), keys=order, timeout_fault_s=2.5).start()
    db = tmp_path / "f.db"
    proc = run_kflow(
        eval_cmd(server.base_url, dataset, db, tmp_path / "out", "faults", 5, "--request-timeout", "1.5"), timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["finished"] == 8
    faults = [r.fault for r in server.requests if r.fault]
    assert {"500", "503", "429", "timeout", "reset", "truncated", "length"} <= set(faults), faults

    conn = sqlite3.connect(db)
    rows = conn.execute(
        "SELECT thread_id, iteration, error, finish_reason, answer, knowledge_added, content FROM kf_rollouts"
    ).fetchall()
    assert len(rows) == 8 * 5  # every rollout stored once: succeeded, or failed with a reason
    for _, _, error, finish, answer_, added, content in rows:
        if error is not None:
            assert finish == "error" and answer_ is None and added is None and content == ""
    truncated = sum(1 for r in rows if r[3] == "length")
    failed = sum(1 for r in rows if r[2] is not None)
    assert result["truncated_rollouts"] == truncated >= 1
    assert result["failed_rollouts"] == failed
    # every knowledge item comes from a complete response that wrote that very report
    for thread, iteration, error, _finish, _, added, content in rows:
        if added:
            item = json.loads(added)
            assert error is None and item["text"] in content, (thread, iteration)


def test_unusable_responses_are_recorded_as_failed(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    dataset, order, _ = dataset_of(tmp_path, 2)
    base = eval_responder(changing_answer(order))

    seen: dict[tuple[str, int], int] = {}
    lock = threading.Lock()

    def respond(request: Request) -> Reply:
        # A failed rollout leaves the reference as it was, so the next prompt looks like the same iteration:
        # each fault is injected for its first requests only (3 tries of a truncated body, 1 refused request).
        reply = base(request)
        key = (request.key, iteration_of(request.prompt))
        with lock:
            seen[key] = seen.get(key, 0) + 1
            count = seen[key]
        if key == (order[0], 2) and count <= 3:
            reply.fault = "truncated"
        if key == (order[1], 1) and count <= 1:
            reply.status = 400  # e.g. the prompt no longer fits the context
        return reply

    server = scripted(respond, keys=order).start()
    db = tmp_path / "u.db"
    proc = run_kflow(eval_cmd(server.base_url, dataset, db, tmp_path / "out", "unusable", 4))
    assert proc.returncode == 0, proc.stderr
    conn = sqlite3.connect(db)
    failed = conn.execute("SELECT thread_id, iteration, error FROM kf_rollouts WHERE error IS NOT NULL").fetchall()
    assert sorted((t, i) for t, i, _ in failed) == [("unusable:0", 2), ("unusable:1", 1)]
    reasons = {t: e for t, _, e in failed}
    assert "JSONDecodeError" in reasons["unusable:0"] and "400" in reasons["unusable:1"]
    truncated = [r for r in server.requests if r.fault == "truncated"]
    assert len(truncated) == 3 and {r.key for r in truncated} == {order[0]}  # retried, then recorded
    assert len([r for r in server.requests if r.status == 400]) == 1  # refused requests are not retried
    # the failed rollouts changed nothing: the next prompt is the one the failed rollout was sent
    rows = conn.execute("SELECT thread_id, iteration, prompt_json FROM kf_rollouts ORDER BY thread_id, iteration")
    prompts = {(t, i): p for t, i, p in rows}
    assert prompts[("unusable:0", 3)] == prompts[("unusable:0", 2)]
    assert prompts[("unusable:1", 2)] == prompts[("unusable:1", 1)]
    assert json.loads(proc.stdout)["failed_rollouts"] == 2


def test_setup_failures_stop_the_run(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    server = scripted(lambda request: Reply(content="", status=400)).start()
    db = tmp_path / "s.db"
    proc = run_kflow(
        ["solve", "p", "--base-url", server.base_url, "--iterations", "10", "--thread-id", "bad", "--db", str(db)]
    )
    assert proc.returncode == 1
    text = " ".join(proc.stderr.split())
    assert "the run failed: its rollouts keep failing" in text and "kflow resume bad" in text
    assert len(server.requests) == 3


def test_endpoint_down_for_good_then_resume(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    dataset, order, _ = dataset_of(tmp_path, 3)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    db = tmp_path / "d.db"
    proc = run_kflow(eval_cmd(url, dataset, db, tmp_path / "out", "down", 3, "--max-retries", "1"))
    assert proc.returncode == 1
    text = " ".join(proc.stderr.split())
    assert "did not finish" in text and "kflow eval --resume down" in text
    assert "Traceback" not in proc.stderr
    server = scripted(eval_responder(changing_answer(order)), keys=order, port=port).start()
    resumed = run_kflow(["eval", "--resume", "down", "--db", str(db), "--json"])
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["finished"] == 3
    assert len(server.delivered()) == 9


def test_database_from_a_newer_version_is_refused(database: Database) -> None:
    db = database.target
    from knowledge_flow.persistence.store import RolloutStore

    RolloutStore(db).close()
    database.execute("UPDATE kf_meta SET value = '999'")
    before = database.snapshot()
    for args in (
        ["solve", "p", "--base-url", "http://127.0.0.1:9/v1", "--db", db],
        ["threads", "--db", db],
        ["show", "t", "--db", db],
        ["eval", "--resume", "r", "--db", db],
    ):
        proc = run_kflow(args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "newer knowledge-flow" in " ".join(proc.stderr.split())
        assert database.password is None or database.password not in proc.stderr
    assert database.snapshot() == before


def test_two_evaluations_write_one_database_at_once(
    scripted: type[ScriptedServer], tmp_path: Path, database: Database
) -> None:
    """R5: no 'database is locked' with two processes writing the same database (both create its tables)."""
    dataset, order, _ = dataset_of(tmp_path, 8)
    server = scripted(eval_responder(changing_answer(order)), keys=order).start()
    db = database.target
    procs = [
        start_kflow(eval_cmd(server.base_url, dataset, db, tmp_path / f"out{i}", f"run{i}", 6, "--concurrency", "8"))
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (stdout, stderr) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, stderr
        assert "locked" not in stderr
        assert json.loads(stdout)["finished"] == 8
    assert database.rows("SELECT count(*) FROM kf_rollouts")[0][0] == 2 * 8 * 6
    if database.kind == "sqlite":
        assert database.rows("PRAGMA integrity_check")[0][0] == "ok"


def test_api_key_is_never_written(scripted: type[ScriptedServer], tmp_path: Path, database: Database) -> None:
    """R6: the key reaches the endpoint and nothing else: database, checkpoints, WAL, results, logs."""
    dataset, order, _ = dataset_of(tmp_path, 2)
    server = scripted(eval_responder(changing_answer(order)), keys=order).start()
    work = tmp_path / "work"
    work.mkdir()
    db = str(work / "k.db") if database.kind == "sqlite" else database.target
    proc = run_kflow(
        eval_cmd(server.base_url, dataset, db, work / "out", "keys", 2),
        env={"KFLOW_API_KEY": SECRET, "KFLOW_CACHE": str(work / "cache")},
    )
    assert proc.returncode == 0, proc.stderr
    report = run_kflow(["report", "keys", "--db", db, "--out", str(work / "rep")])
    assert report.returncode == 0
    assert all(r.headers.get("authorization") == f"Bearer {SECRET}" for r in server.requests)
    files = [p for p in work.rglob("*") if p.is_file()]
    assert any(p.suffix == ".png" for p in files)
    assert database.kind == "postgres" or any(p.name.endswith(".db") for p in files)
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path
    if database.kind == "postgres":
        assert SECRET.encode() not in database.content() and database.rows("SELECT count(*) FROM kf_rollouts")[0][0]
    assert SECRET not in proc.stdout + proc.stderr + report.stdout + report.stderr


def test_local_server_binds_loopback_by_default() -> None:
    from pathlib import Path as P

    from knowledge_flow.server_launch.local import command

    argv = command(P("/m.gguf"), "127.0.0.1", 8765, 4096, "alias")
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    import inspect

    from knowledge_flow.server_launch.local import start_local

    assert inspect.signature(start_local).parameters["host"].default == "127.0.0.1"
