"""PostgreSQL as the store, against a real server: refusals that touch nothing, a password that is never stored,
logged or shown, what is stored compressed, NUL characters, and `kflow db copy` both ways (same report, copies
that resume)."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from knowledge_flow.persistence.store import get_store
from tests.conftest import run_kflow
from tests.integration.test_reliability import changing_answer, dataset_of, eval_cmd
from tests.support.databases import Database
from tests.support.eval_script import eval_responder, iteration_of
from tests.support.postgres import PostgresCluster
from tests.support.scripted_server import Reply, ScriptedServer, kf_output

PROBLEM = "How many positive divisors does 36 have?"


def solve_args(url: str, db: str, thread: str, iterations: int) -> list[str]:
    return ["solve", PROBLEM, "--base-url", url, "--iterations", str(iterations), "--thread-id", thread,
            "--db", db, "--model", "m", "--prompts", "kf-instruct-paper", "--json"]  # fmt: skip


def one_line(text: str) -> str:
    return " ".join(text.split())


def test_a_database_of_something_else_is_refused_untouched(postgres: Database) -> None:
    postgres.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    for args in (["solve", "p", "--base-url", "http://127.0.0.1:9/v1"], ["threads"], ["eval", "--resume", "r"]):
        proc = run_kflow([*args, "--db", postgres.target])
        assert proc.returncode == 2, proc.stderr
        assert "is a PostgreSQL database of something else (tables customers)" in one_line(proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and str(postgres.password) not in proc.stderr
    assert postgres.tables() == {"customers"}


def test_unreachable_databases_and_bad_urls_are_one_line_without_the_password(
    postgres_cluster: PostgresCluster, postgres: Database
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    wrong = postgres.target.replace(postgres_cluster.password, "not-the-password-7f3e")
    cases = {
        f"postgresql://kflow:secret-91ab@127.0.0.1:{closed}/x": "cannot open database postgresql://kflow:[REDACTED]@127.0.0.1",
        wrong: "password authentication failed",
        "postgresql://kflow:secret-91ab@127.0.0.1/": "names no database",
    }
    for url, expected in cases.items():
        proc = run_kflow(["threads", "--db", url])
        assert proc.returncode == 2, proc.stderr
        assert expected in one_line(proc.stderr) and len(proc.stderr.strip().splitlines()) == 1
        assert "secret-91ab" not in proc.stderr and "not-the-password-7f3e" not in proc.stderr
        assert "Traceback" not in proc.stderr
    assert postgres.tables() == set()


def test_reading_commands_create_nothing_in_an_empty_database(postgres: Database) -> None:
    for args in (["threads"], ["show", "t"], ["report", "r"], ["resume", "t"], ["eval", "--resume", "r"]):
        proc = run_kflow([*args, "--db", postgres.target])
        assert proc.returncode == 2, (args, proc.stderr)
        assert "holds no knowledge-flow runs" in proc.stderr and str(postgres.password) not in proc.stderr
    assert postgres.tables() == set()


def test_the_password_is_never_stored_logged_or_shown(
    scripted: type[ScriptedServer], tmp_path: Path, postgres: Database
) -> None:
    dataset, order, _ = dataset_of(tmp_path, 2)
    server = scripted(eval_responder(changing_answer(order)), keys=order).start()
    solver = scripted(lambda r: Reply(content=kf_output("5", f"S{r.index}"))).start()
    db, password = postgres.target, postgres.password
    assert password
    procs = [
        run_kflow(solve_args(solver.base_url, db, "pw", 2)),
        run_kflow(["solve", PROBLEM, "--base-url", solver.base_url, "--thread-id", "pw-env"], env={"KFLOW_DB": db}),
        run_kflow(eval_cmd(server.base_url, dataset, db, tmp_path / "out", "pw-eval", 2)),
        run_kflow(["show", "pw", "--db", db, "--texts"]),
        run_kflow(["threads", "--db", db]),
        run_kflow(["threads"], env={"KFLOW_DB": db}),
        run_kflow(["resume", "pw", "--db", db, "--iterations", "3"]),
        run_kflow(["report", "pw-eval", "--db", db, "--out", str(tmp_path / "rep")]),
        run_kflow(["eval", "--resume", "pw-eval", "--db", db, "--iterations", "3"]),
    ]
    for proc in procs:
        assert proc.returncode == 0, proc.stderr
        assert password not in proc.stdout + proc.stderr
    shown = "".join(proc.stdout + proc.stderr for proc in procs)
    assert "postgresql://kflow:[REDACTED]@127.0.0.1" in shown  # the database is named, its password masked
    assert password.encode() not in postgres.content()
    files = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert any(path.suffix == ".png" for path in files) and any(path.suffix == ".json" for path in files)
    for path in files:
        assert password.encode() not in path.read_bytes(), path
    failed = run_kflow(["eval", "--resume", "pw-eval", "--db", db, "--base-url", "http://127.0.0.1:9/v1",
                        "--iterations", "4", "--max-retries", "0"])  # fmt: skip
    assert failed.returncode == 1 and password not in failed.stdout + failed.stderr
    assert "kflow eval --resume pw-eval --db postgresql://kflow:[REDACTED]@" in one_line(failed.stderr)


def test_texts_and_checkpoints_are_stored_compressed_and_nul_characters_are_stored_as_on_sqlite(
    scripted: type[ScriptedServer], postgres: Database
) -> None:
    long_summary = "The divisors of 36 are 1, 2, 3, 4, 6, 9, 12, 18 and 36. " * 20

    def respond(request: Any) -> Reply:
        return Reply(content=kf_output("9", f"S{request.index}\x00 {long_summary}"), reasoning="think\x00ing")

    server = scripted(respond).start()
    proc = run_kflow(solve_args(server.base_url, postgres.target, "nul", 2))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["answers"] == ["9", "9"]
    store = get_store(postgres.target)
    rows = store.rollouts(store.latest_run("nul").run_id)  # type: ignore[union-attr]
    # a reply's NUL characters are stored as U+FFFD on either store (text.safe.storable); nothing fails
    assert [row.reasoning for row in rows] == ["think\ufffding", "think\ufffding"]
    assert all("\ufffd The divisors" in row.content for row in rows)
    raw = postgres.rows("SELECT substring(content FROM 1 FOR 2), length(content) FROM kf_rollouts")
    assert all(bytes(head) == b"\x78\x9c" and size < len(long_summary) for head, size in raw)  # zlib
    sql = "SELECT type FROM checkpoint_blobs UNION SELECT type FROM checkpoint_writes"
    types = [kind for (kind,) in postgres.rows(sql)]
    assert any(kind.endswith("+zlib") for kind in types)


def test_opening_waits_for_the_schema_lock_without_blocking_concurrent_index_builds(postgres: Database) -> None:
    """A process opening the database while another holds the schema lock and builds an index concurrently
    (LangGraph's checkpoint setup does) waits outside any transaction: no deadlock."""
    import psycopg

    from knowledge_flow.persistence.postgres import SCHEMA_LOCK
    from knowledge_flow.persistence.store import RolloutStore

    opened: list[Any] = []
    with psycopg.connect(postgres.target, autocommit=True) as holder:
        holder.execute("CREATE TABLE kf_probe (id integer)")
        holder.execute(f"SELECT pg_advisory_lock({SCHEMA_LOCK})")
        opener = threading.Thread(target=lambda: opened.append(RolloutStore(postgres.target)))
        opener.start()
        time.sleep(2.0)  # the other process is waiting for the lock by now
        holder.execute("SET statement_timeout = '60s'")
        holder.execute("CREATE INDEX CONCURRENTLY kf_probe_id ON kf_probe (id)")  # waits for open transactions
        assert not opened  # it still waits for the lock
        holder.execute(f"SELECT pg_advisory_unlock({SCHEMA_LOCK})")
        opener.join(timeout=60)
    assert opened and "kf_runs" in postgres.tables()
    opened[0].close()


def report_of(db: str, eval_id: str, out: Path) -> dict[str, Any]:
    proc = run_kflow(["report", eval_id, "--db", db, "--out", str(out), "--json"])
    assert proc.returncode == 0, proc.stderr
    payload: dict[str, Any] = json.loads(proc.stdout)
    payload.pop("plot")
    return payload


def shown(db: str, thread: str) -> dict[str, Any]:
    proc = run_kflow(["show", thread, "--db", db, "--json", "--texts"])
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


@pytest.mark.parametrize("start", ["sqlite", "postgres"])
def test_db_copy_round_trips_a_finished_evaluation_and_copies_resume(
    scripted: type[ScriptedServer], tmp_path: Path, postgres: Database, start: str
) -> None:
    dataset, order, _ = dataset_of(tmp_path, 4)
    server = scripted(eval_responder(changing_answer(order)), keys=order).start()
    solver = scripted(lambda r: Reply(content=kf_output(str(5 + r.index), f"S{r.index}"))).start()
    laptop = str(tmp_path / "laptop.db")
    first, second = (laptop, postgres.target) if start == "sqlite" else (postgres.target, laptop)
    done = run_kflow(eval_cmd(server.base_url, dataset, first, tmp_path / "out", "moved", 3))
    assert done.returncode == 0, done.stderr
    assert run_kflow(solve_args(solver.base_url, first, "alone", 2)).returncode == 0
    sent = len(server.requests)

    copied = run_kflow(["db", "copy", first, second, "--json"])
    assert copied.returncode == 0, copied.stderr
    summary = json.loads(copied.stdout)
    assert summary["rows"]["kf_rollouts"] == 4 * 3 + 2 and summary["rows"]["kf_eval_items"] == 4
    assert summary["threads"] == 5 and summary["checkpoints"] > 5 * 3
    assert str(postgres.password) not in copied.stdout + copied.stderr
    before = report_of(first, "moved", tmp_path / "r1")
    assert report_of(second, "moved", tmp_path / "r2") == before
    assert shown(second, "moved:2") == shown(first, "moved:2") and shown(second, "alone") == shown(first, "alone")
    listed = [run_kflow(["threads", "--db", db, "--json"]).stdout for db in (first, second)]
    assert json.loads(listed[0]) == json.loads(listed[1])

    back = str(tmp_path / "back.db")
    assert run_kflow(["db", "copy", second, back]).returncode == 0
    assert report_of(back, "moved", tmp_path / "r3") == before
    again = run_kflow(["db", "copy", first, second])
    assert again.returncode == 2 and "already holds run" in again.stderr
    assert len(server.requests) == sent and len(solver.requests) == 2  # copying sends nothing

    # the copies continue from their checkpoints: nothing stored is requested again
    extended = run_kflow(["eval", "--resume", "moved", "--db", second, "--iterations", "4", "--json"])
    assert extended.returncode == 0, extended.stderr
    assert json.loads(extended.stdout)["finished"] == 4 and len(json.loads(extended.stdout)["per_iteration"]) == 4
    more = run_kflow(["resume", "alone", "--db", back, "--iterations", "3", "--json"])
    assert more.returncode == 0, more.stderr
    assert json.loads(more.stdout)["answers"] == ["5", "6", "7"]
    assert sorted(iteration_of(r.prompt) for r in server.requests[sent:]) == [3, 3, 3, 3]
    assert len(solver.requests) == 3
