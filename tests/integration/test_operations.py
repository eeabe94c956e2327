"""Operating a run as a researcher on a GPU node does: failures that leave a resumable run, signals, one process
per run, secrets echoed by gateways, bad files, resumes that change options, extended budgets, progress in
logs, reports that show failures. Real subprocesses and real HTTP (the scripted server) throughout."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_kflow, start_kflow
from tests.integration.scripts import PAPER_SET
from tests.integration.test_reliability import changing_answer, dataset_of, eval_cmd
from tests.support.databases import Database
from tests.support.eval_script import eval_responder
from tests.support.scripted_server import Reply, Request, ScriptedServer, kf_output, script_responder

PROBLEM = "How many positive divisors does 36 have?"


def solve_args(url: str, db: Path | str, thread: str, iterations: int, *extra: str) -> list[str]:
    return ["solve", PROBLEM, "--base-url", url, "--iterations", str(iterations), "--thread-id", thread,
            "--db", str(db), "--model", "m", "--prompts", PAPER_SET, "--json", *extra]  # fmt: skip


def one_line(text: str) -> str:
    return " ".join(text.split())


def rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return list(conn.execute(sql))


# --- 1, 13: failed runs -----------------------------------------------------------------------------------


def test_failed_streak_then_resume_tries_those_iterations_again(
    scripted: type[ScriptedServer], database: Database
) -> None:
    broken = threading.Event()
    broken.set()

    def respond(request: Request) -> Reply:
        if broken.is_set():
            return Reply(content="", status=400)  # a setup fault: every request refused
        return Reply(content=kf_output(str(5 + request.index), f"S{request.index}"))

    server = scripted(respond).start()
    db = database.target
    failed = run_kflow(solve_args(server.base_url, db, "fs", 5))
    assert failed.returncode == 1
    text = one_line(failed.stderr)
    assert "the run failed: its rollouts keep failing" in text and "kflow resume fs" in text
    assert "Traceback" not in failed.stderr and len(server.requests) == 3
    broken.clear()  # the cause is fixed
    resumed = run_kflow(["resume", "fs", "--db", db, "--json"])
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads(resumed.stdout)
    assert result["status"] == "done" and len(result["answers"]) == 5 and None not in result["answers"]
    assert len(server.requests) == 3 + 5  # the 3 failed iterations were tried again, then 2 more
    assert database.rows("SELECT COUNT(*) FROM kf_rollouts WHERE error IS NOT NULL") == [(0,)]


def test_a_short_run_whose_every_rollout_failed_is_a_failure(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    server = scripted(lambda request: Reply(content="", status=422)).start()
    proc = run_kflow(solve_args(server.base_url, tmp_path / "s.db", "short", 2))
    assert proc.returncode == 1 and json.loads(proc.stdout)["status"] == "failed"
    assert "UnprocessableEntityError" in proc.stderr  # the reason is shown


# --- 2: signals -------------------------------------------------------------------------------------------


def slow_eval(scripted: type[ScriptedServer], tmp_path: Path, problems: int, delay: float) -> tuple[Any, Path, Path]:
    dataset, order, _ = dataset_of(tmp_path, problems)
    answer = changing_answer(order)
    server = scripted(eval_responder(answer, dict.fromkeys(order, delay)), keys=order).start()
    return server, dataset, tmp_path / "e.db"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_first_signal_stops_eval_keeps_what_is_complete_and_resumes(
    scripted: type[ScriptedServer], tmp_path: Path, sig: signal.Signals
) -> None:
    server, dataset, db = slow_eval(scripted, tmp_path, 8, 0.4)
    args = eval_cmd(server.base_url, dataset, db, tmp_path / "out", "sig", 4, "--concurrency", "2")
    proc = start_kflow(args)
    deadline = time.monotonic() + 60
    while len(server.delivered()) < 9 and time.monotonic() < deadline:  # two problems complete, a third started
        time.sleep(0.05)
    proc.send_signal(sig)
    signalled = time.monotonic()
    sent_then = len(server.requests)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert time.monotonic() - signalled < 5  # within a couple of seconds (2 requests were in flight)
    assert len(server.requests) <= sent_then + 2  # nothing new started after the signal
    text = one_line(stderr)
    assert f"{sig.name}: stopped; continue with `kflow eval --resume sig --db {db}`" in text
    done = rows(db, "SELECT COUNT(*) FROM kf_eval_items WHERE eval_id = 'sig' AND status = 'done'")[0][0]
    assert done >= 1
    folder = tmp_path / "out" / "vllm_512_knowledge-flow" / "m"
    head = json.loads((folder / "predictions_0.json").read_text())[0]
    assert head["total"] == done  # the prediction files hold the problems that are complete
    resumed = run_kflow(["eval", "--resume", "sig", "--db", str(db), "--json"])
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["finished"] == 8
    assert len(server.delivered()) == 8 * 4  # each completed rollout paid for once
    assert json.loads((folder / "predictions_0.json").read_text())[0]["total"] == 8


def test_ctrl_c_stops_solve_at_once_and_resume_finishes(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    hold = threading.Event()

    def respond(request: Request) -> Reply:
        reply = Reply(content=kf_output("5", f"S{request.index}"))
        if request.index == 2 and not hold.is_set():
            reply.hold = hold  # the third request hangs until the test lets it go
        return reply

    server = scripted(respond).start()
    db = tmp_path / "c.db"
    proc = start_kflow(solve_args(server.base_url, db, "cc", 4))
    deadline = time.monotonic() + 60
    while len(server.requests) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    signalled = time.monotonic()
    _, stderr = proc.communicate(timeout=30)
    hold.set()
    assert proc.returncode == 130 and time.monotonic() - signalled < 5
    assert "SIGINT: stopped; completed rollouts are saved; continue with `kflow resume cc" in one_line(stderr)
    assert rows(db, "SELECT COUNT(*) FROM kf_rollouts") == [(2,)]  # the abandoned one was not stored
    resumed = run_kflow(["resume", "cc", "--db", str(db), "--json"])
    assert resumed.returncode == 0, resumed.stderr
    assert len(json.loads(resumed.stdout)["answers"]) == 4
    # the abandoned request was never answered and is sent again; every rollout was paid for once
    assert len(server.requests) == 5 and len(server.delivered()) == 4


# --- 3: one process per run ------------------------------------------------------------------------------


def test_two_resumes_of_one_run_do_not_both_run(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    dataset, order, _ = dataset_of(tmp_path, 4)
    answer_of = eval_responder(changing_answer(order))
    release = threading.Event()
    release.set()

    def respond(request: Request) -> Reply:
        reply = answer_of(request)
        if not release.is_set():
            reply.hold = release  # the owner's requests wait while the other processes try their luck
        return reply

    server = scripted(respond, keys=order).start()
    db = tmp_path / "e.db"
    first = run_kflow(eval_cmd(server.base_url, dataset, db, tmp_path / "out", "lease", 2))
    assert first.returncode == 0, first.stderr
    release.clear()
    owner = start_kflow(["eval", "--resume", "lease", "--db", str(db), "--iterations", "3"])
    deadline = time.monotonic() + 60
    while len(server.requests) < 8 + 4 and time.monotonic() < deadline:  # the owner's requests are waiting
        time.sleep(0.05)
    second = run_kflow(["eval", "--resume", "lease", "--db", str(db)])
    assert second.returncode == 2
    assert f"evaluation run lease is being continued by pid {owner.pid} on " in one_line(second.stderr)
    thread = run_kflow(["resume", "lease:0", "--db", str(db)])
    assert thread.returncode == 2
    assert "belongs to evaluation run lease, being continued by pid" in one_line(thread.stderr)
    assert len(server.requests) == 8 + 4  # neither sent anything
    release.set()
    _, errors = owner.communicate(timeout=120)
    assert owner.returncode == 0, errors
    assert len(server.delivered()) == 4 * 3  # nothing paid twice, although three processes tried


def test_two_resumes_of_one_thread_do_not_both_run(scripted: type[ScriptedServer], database: Database) -> None:
    release = threading.Event()
    release.set()

    def respond(request: Request) -> Reply:
        reply = Reply(content=kf_output(str(5 + request.index), f"S{request.index}"))
        if not release.is_set():
            reply.hold = release
        return reply

    server = scripted(respond).start()
    db = database.target
    assert run_kflow(solve_args(server.base_url, db, "lk", 2)).returncode == 0
    release.clear()
    owner = start_kflow(["resume", "lk", "--db", db, "--iterations", "3", "--json"])
    deadline = time.monotonic() + 60
    while len(server.requests) < 3 and time.monotonic() < deadline:  # the owner's request is waiting
        assert owner.poll() is None, owner.communicate()
        time.sleep(0.05)
    second = run_kflow(["resume", "lk", "--db", db, "--iterations", "3"])
    assert second.returncode == 2
    assert f"thread lk is being continued by pid {owner.pid} on " in one_line(second.stderr)
    release.set()
    stdout, errors = owner.communicate(timeout=120)
    assert owner.returncode == 0, errors
    assert json.loads(stdout)["answers"] == ["5", "6", "7"]
    assert len(server.requests) == 3 and database.rows("SELECT count(*) FROM kf_leases") == [(0,)]


def test_a_sigkilled_owner_does_not_lock_the_run(
    scripted: type[ScriptedServer], tmp_path: Path, database: Database
) -> None:
    server, dataset, _ = slow_eval(scripted, tmp_path, 3, 0.5)
    db = database.target
    # its leases would stay live for an hour: they are freed because it ran on this host and is gone
    args = eval_cmd(server.base_url, dataset, db, tmp_path / "out", "dead", 3)
    proc = start_kflow(args, new_session=True, env={"KFLOW_HEARTBEAT_TIMEOUT": "3600"})
    deadline = time.monotonic() + 60
    while len(server.delivered()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    left = database.rows("SELECT pid FROM kf_leases")  # the evaluation's (SQLite) and the worker's
    assert left and {pid for (pid,) in left} == {proc.pid}  # left behind by the killed process
    assert database.rows("SELECT count(*) FROM kf_eval_items WHERE claimed_by IS NOT NULL")[0][0] > 0
    resumed = run_kflow(["eval", "--resume", "dead", "--db", db, "--json"])
    assert resumed.returncode == 0, resumed.stderr  # its owner is gone: the lease and claims are free
    assert json.loads(resumed.stdout)["finished"] == 3
    assert database.rows("SELECT COUNT(*) FROM kf_leases") == [(0,)]


# --- 4: secrets ---------------------------------------------------------------------------------------------


SECRET = "sk-echoed-SECRET-5c0ffee"


@pytest.mark.parametrize("status", [400, 401])
def test_an_echoed_key_is_never_stored_logged_or_shown(
    scripted: type[ScriptedServer], tmp_path: Path, status: int, database: Database
) -> None:
    """Some gateways echo the request's Authorization header in their error bodies."""

    def respond(request: Request) -> Reply:  # the error body repeats the header, and the key once more
        echoed = f"invalid request; Authorization: {request.headers.get('authorization')} (api_key={SECRET})"
        return Reply(content=echoed, status=status)

    server = scripted(respond).start()
    dataset, _, _ = dataset_of(tmp_path, 2)
    db = database.target
    env = {"KFLOW_API_KEY": SECRET}
    solved = run_kflow(solve_args(server.base_url, db, "key", 3), env=env)
    evaluated = run_kflow(eval_cmd(server.base_url, dataset, db, tmp_path / "out", "keys", 2), env=env)
    shown = run_kflow(["show", "key", "--db", db, "--json", "--texts"])
    reported = run_kflow(["report", "keys", "--db", db, "--out", str(tmp_path / "rep"), "--json"])
    assert any(f"Bearer {SECRET}" in r.headers.get("authorization", "") for r in server.requests)  # it was sent
    assert solved.returncode == 1 and evaluated.returncode == 1
    for proc in (solved, evaluated, shown, reported):
        assert SECRET not in proc.stdout + proc.stderr
    assert "[REDACTED]" in solved.stderr + solved.stdout + shown.stdout
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET.encode() not in database.content() and b"[REDACTED]" in database.content()


# --- 7, 8, 9: bad input before anything is written ---------------------------------------------------------


def test_invalid_graph_input_writes_no_checkpoint(tmp_path: Path) -> None:
    from knowledge_flow import compile_graph
    from knowledge_flow.persistence import SqliteCheckpointer

    checkpointer = SqliteCheckpointer(tmp_path / "g.db")
    graph = compile_graph(checkpointer)
    config: Any = {"configurable": {"thread_id": "bad"}}
    with pytest.raises(ValueError, match="iterations must be between 1 and 10000, got 0"):
        graph.invoke({"problem": "p", "iterations": 0}, config)
    with pytest.raises(ValueError, match="unknown prompt set"):
        graph.invoke({"problem": "p", "prompts": "kf-none"}, config)
    assert not graph.get_state(config).values
    assert list(checkpointer.list(config)) == []
    checkpointer.close()


@pytest.mark.parametrize("content", [b"just some text\n", bytes(random.Random(3).randrange(256) for _ in range(4096))])
def test_a_db_that_is_not_sqlite_is_refused_untouched(tmp_path: Path, content: bytes) -> None:
    db = tmp_path / "not.db"
    db.write_bytes(content)
    for args in (["solve", "p", "--db", str(db), "--base-url", "http://127.0.0.1:9/v1"], ["threads", "--db", str(db)]):
        proc = run_kflow(args)
        assert proc.returncode == 2 and "is not an SQLite database" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert db.read_bytes() == content and sorted(p.name for p in tmp_path.iterdir()) == ["not.db"]


def test_an_sqlite_file_of_something_else_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "other.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    before = db.read_bytes()
    proc = run_kflow(["solve", "p", "--db", str(db), "--base-url", "http://127.0.0.1:9/v1"])
    assert proc.returncode == 2 and "an SQLite database of something else (tables customers)" in proc.stderr
    assert db.read_bytes() == before
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()  # an empty SQLite file is fine
    assert run_kflow(["threads", "--db", str(empty)]).returncode == 0


def test_output_paths_that_are_files_are_refused_before_any_request(
    scripted: type[ScriptedServer], tmp_path: Path
) -> None:
    server = scripted(script_responder({"default": [kf_output("1", "s")]})).start()
    dataset, _, _ = dataset_of(tmp_path, 2)
    blocker = tmp_path / "results-file"
    blocker.write_text("not a folder")
    proc = run_kflow(eval_cmd(server.base_url, dataset, tmp_path / "o.db", blocker, "out", 1))
    assert proc.returncode == 2 and "is a file, not a folder" in proc.stderr
    assert server.requests == [] and not (tmp_path / "o.db").exists()
    fine = run_kflow(eval_cmd(server.base_url, dataset, tmp_path / "o.db", tmp_path / "res", "out", 1))
    assert fine.returncode == 0, fine.stderr
    report = run_kflow(["report", "out", "--db", str(tmp_path / "o.db"), "--out", str(blocker)])
    assert report.returncode == 2 and "is a file, not a folder" in report.stderr


# --- 10: resume with options ------------------------------------------------------------------------------


def test_resume_refuses_changed_options_and_extends_the_budget(
    scripted: type[ScriptedServer], tmp_path: Path, database: Database
) -> None:
    server, dataset, _ = slow_eval(scripted, tmp_path, 3, 0.0)
    db = database.target
    first = run_kflow(eval_cmd(server.base_url, dataset, db, tmp_path / "out", "ext", 2, "--concurrency", "3"))
    assert first.returncode == 0, first.stderr
    changed = run_kflow(["eval", "--resume", "ext", "--db", str(db), "--model", "other", "--strategy", "regeneration"])
    assert changed.returncode == 2
    assert "--model cannot change when resuming run 'ext' (it runs with 'm')" in one_line(changed.stderr)
    shrink = run_kflow(["eval", "--resume", "ext", "--db", str(db), "--iterations", "1"])
    assert shrink.returncode == 2 and "cannot shrink" in shrink.stderr
    assert len(server.requests) == 3 * 2
    extended = run_kflow(["eval", "--resume", "ext", "--db", str(db), "--iterations", "4", "--json"])
    assert extended.returncode == 0, extended.stderr
    assert len(server.delivered()) == 3 * 4  # the first two iterations were not paid again
    result = json.loads(extended.stdout)
    assert result["iterations"] == 4 and result["finished"] == 3 and len(result["per_iteration"]) == 4
    manifest = json.loads(database.rows("SELECT manifest_json FROM kf_evals")[0][0])
    assert manifest["params"]["iterations"] == 4 and manifest["concurrency"] == 3
    assert [(e["from"], e["to"]) for e in manifest["extensions"]] == [(2, 4)]


def test_resume_of_a_thread_extends_it(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    server = scripted(lambda r: Reply(content=kf_output("5", f"S{r.index}"))).start()
    db = tmp_path / "t.db"
    assert run_kflow(solve_args(server.base_url, db, "more", 2)).returncode == 0
    more = run_kflow(["resume", "more", "--db", str(db), "--iterations", "3", "--json"])
    assert more.returncode == 0, more.stderr
    assert len(json.loads(more.stdout)["answers"]) == 3 and len(server.requests) == 3


def test_show_and_threads_read_the_checkpoint_and_mend_the_runs_table(
    scripted: type[ScriptedServer], tmp_path: Path
) -> None:
    """The checkpoint is the source of a run's status; a `kf_runs` row left behind (a process that died between
    the two writes) is corrected when `show` or `threads` reads it, so they agree with `resume`."""
    server = scripted(lambda r: Reply(content=kf_output("5", f"S{r.index}"))).start()
    db = tmp_path / "m.db"
    assert run_kflow(solve_args(server.base_url, db, "mend", 2)).returncode == 0
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE kf_runs SET status = 'running', iterations_done = 1, final_answer = NULL")
    listed = run_kflow(["threads", "--db", str(db), "--json"])
    assert listed.returncode == 0, listed.stderr
    assert [(t["status"], t["iterations_done"], t["final_answer"]) for t in json.loads(listed.stdout)] == [
        ("done", 2, "5")
    ]
    assert rows(db, "SELECT status, iterations_done, final_answer FROM kf_runs") == [("done", 2, "5")]
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE kf_runs SET status = 'failed'")
    shown = json.loads(run_kflow(["show", "mend", "--db", str(db), "--json"]).stdout)
    assert shown["status"] == "done"
    resumed = run_kflow(["resume", "mend", "--db", str(db), "--json"])
    assert resumed.returncode == 0 and json.loads(resumed.stdout)["status"] == "done"
    assert len(server.requests) == 2


# --- 11: several endpoints ---------------------------------------------------------------------------------


def test_repeated_base_url_uses_every_endpoint(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    a = scripted(lambda r: Reply(content=kf_output("5", "s"), delay_s=0.2)).start()
    b = scripted(lambda r: Reply(content=kf_output("5", "s"), delay_s=0.2)).start()
    dataset, _, _ = dataset_of(tmp_path, 4)
    db = tmp_path / "r.db"
    args = ["eval", "--dataset", str(dataset), "--iterations", "2", "--db", str(db), "--model", "m",
            "--prompts", PAPER_SET, "--run-id", "rep", "--output-dir", str(tmp_path / "o"), "--base-url", a.base_url,
            "--base-url", b.base_url, "--json"]  # fmt: skip
    proc = run_kflow(args)
    assert proc.returncode == 0, proc.stderr
    assert a.requests and b.requests and len(a.requests) + len(b.requests) == 8
    urls = {entry["url"] for entry in json.loads(proc.stdout)["replicas"]}
    assert urls == {a.base_url, b.base_url}


# --- 14, 15, 17, 18: reports, tables, logs ----------------------------------------------------------------


def test_report_counts_failed_cut_off_and_retried_rollouts_from_the_store(
    scripted: type[ScriptedServer], tmp_path: Path
) -> None:
    dataset, order, _ = dataset_of(tmp_path, 3)
    refused: list[str] = []

    def respond(request: Request) -> Reply:
        position = order.index(request.key)
        if position == 0 and len(refused) < 2:
            refused.append(request.key)
            return Reply(content="", status=400)  # two failed rollouts for problem 0
        reply = Reply(content=kf_output("7", "s" * 200))
        if position == 1:
            reply.fault = "length"  # cut off at the token limit
        return reply

    server = scripted(respond, keys=order).start()
    db = tmp_path / "c.db"
    proc = run_kflow(eval_cmd(server.base_url, dataset, db, tmp_path / "o", "cnt", 3))
    assert proc.returncode == 0, proc.stderr
    report = run_kflow(["report", "cnt", "--db", str(db), "--out", str(tmp_path / "rep"), "--json"])
    payload = json.loads(report.stdout)
    assert payload["failed_rollouts"] == 2 and payload["truncated_rollouts"] == 3
    assert [f["failed_rollouts"] for f in payload["per_iteration"]] == [1, 1, 0]
    assert [f["truncated_rollouts"] for f in payload["per_iteration"]] == [1, 1, 1]
    text = run_kflow(["report", "cnt", "--db", str(db), "--out", str(tmp_path / "rep")]).stdout
    assert "rollouts failed: 2, cut off at the token limit: 3" in one_line(text)


def test_tables_show_whole_identifiers_and_eval_threads_show_gold(
    scripted: type[ScriptedServer], tmp_path: Path
) -> None:
    server, dataset, db = slow_eval(scripted, tmp_path, 2, 0.0)
    run_id = "a-rather-long-evaluation-run-name-2026-11-23"
    assert run_kflow(eval_cmd(server.base_url, dataset, db, tmp_path / "o", run_id, 2)).returncode == 0
    listing = run_kflow(["threads", "--db", str(db), "--eval", run_id])
    assert listing.returncode == 0
    assert f"{run_id}:0" in listing.stdout and f"{run_id}:1" in listing.stdout and "…" not in listing.stdout
    ids = json.loads(run_kflow(["threads", "--db", str(db), "--json"]).stdout)
    assert [t["created_at"] for t in ids] == sorted(t["created_at"] for t in ids)
    assert all(t["run_id"] in listing.stdout for t in ids)
    shown = json.loads(run_kflow(["show", f"{run_id}:0", "--db", str(db), "--json"]).stdout)
    assert shown["evaluation"] == run_id and shown["gold"] and all("correct" in r for r in shown["rollouts"])
    table = run_kflow(["show", f"{run_id}:0", "--db", str(db)]).stdout
    assert f"gold answer {shown['gold']}" in table


def test_batch_logs_get_plain_progress_lines_and_no_math_verify_warnings(
    scripted: type[ScriptedServer], tmp_path: Path
) -> None:
    data = tmp_path / "latex.jsonl"
    data.write_text("\n".join(json.dumps({"problem": f"P{i}", "answer": "\\frac{1}{2}"}) for i in range(3)))
    server = scripted(lambda r: Reply(content=kf_output("0.5", "s"), delay_s=0.3), keys=["P0", "P1", "P2"]).start()
    args = ["eval", "--dataset", str(data), "--iterations", "2", "--db", str(tmp_path / "l.db"), "--model", "m",
            "--prompts", PAPER_SET,
            "--answer-type", "latex", "--output-dir", str(tmp_path / "o"), "--progress-every", "0.2",
            "--base-url", server.base_url]  # fmt: skip
    proc = run_kflow(args)  # stderr is a pipe, not a terminal
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("progress: ")]
    assert len(lines) >= 3 and "rollouts/min" in lines[-1] and "problems 3/3 done" in lines[-1]
    assert "Timeout is disabled" not in proc.stderr
    assert "final-answer accuracy 100.0%" in lines[-1]  # 0.5 is 1/2


def test_plot_has_the_scaling_curve_and_compare_warns_of_different_datasets(
    scripted: type[ScriptedServer], tmp_path: Path
) -> None:
    server, other, db = slow_eval(scripted, tmp_path, 3, 0.0)
    dataset, _, _ = dataset_of(tmp_path, 2, name="two.jsonl")
    assert run_kflow(eval_cmd(server.base_url, dataset, db, tmp_path / "o", "one", 2)).returncode == 0
    assert run_kflow(eval_cmd(server.base_url, other, db, tmp_path / "o", "two", 2)).returncode == 0
    proc = run_kflow(["report", "one", "--compare", "two", "--db", str(db), "--out", str(tmp_path / "p"), "--json"])
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    assert payload["same_dataset"] is False and "different datasets" in proc.stderr
    assert Path(payload["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [f["final_accuracy"] for f in payload["per_iteration"]]  # the curve's figures are in the report


def test_help_and_argument_errors_do_not_load_the_graph() -> None:
    """Which modules `kflow --help` and an argument error import (their timing is benchmark B6)."""
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from knowledge_flow.cli import app\n"
        "for args in (['--help'], ['solve', 'x', '--iterations', '0'], ['eval']):\n"
        "    CliRunner().invoke(app, args)\n"
        "heavy = [m for m in ('langgraph', 'openai', 'sqlalchemy', 'datasets', 'matplotlib') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "", proc.stdout
