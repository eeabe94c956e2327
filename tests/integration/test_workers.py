"""Workers sharing one evaluation: claims with leases, a worker SIGKILLed mid-run whose problems the others
finish, endpoints per worker, `--max-problems`, and which worker ran what. Real `kflow` processes, real HTTP
(a scripted server per worker), a real PostgreSQL server; the claim tests run over both stores."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from knowledge_flow.evaluation.claims import claim, claimed_elsewhere, join, release
from knowledge_flow.evaluation.rows import EvalItemRow, EvalRow, EvalStore
from knowledge_flow.persistence.leases import LeaseRow, acquire, db_clock
from knowledge_flow.persistence.store import get_store
from tests.conftest import run_kflow, start_kflow
from tests.integration.test_reliability import changing_answer, dataset_of, eval_cmd
from tests.support.databases import Database
from tests.support.eval_script import eval_responder, iteration_of
from tests.support.scripted_server import Reply, Request, ScriptedServer

#: Seconds without a heartbeat before a worker's claims are free (short, so the tests do not wait long).
TIMEOUT = {"KFLOW_HEARTBEAT_TIMEOUT": "3"}


def wait_for(condition: Any, what: str, timeout: float = 300, procs: tuple[Any, ...] = ()) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        for proc in procs:
            assert proc.poll() is None, (what, proc.communicate())
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def one_line(text: str) -> str:
    return " ".join(text.split())


def paid(servers: list[ScriptedServer]) -> list[tuple[str, int]]:
    """Every rollout delivered by any server, as (problem, iteration)."""
    return [(r.key, iteration_of(r.prompt)) for server in servers for r in server.delivered()]


def test_three_workers_one_sigkilled_every_problem_done_once(
    scripted: type[ScriptedServer], tmp_path: Path, postgres: Database
) -> None:
    problems, iterations = 12, 4
    dataset, order, _ = dataset_of(tmp_path, problems)
    answer = changing_answer(order)
    respond = eval_responder(answer, dict.fromkeys(order, 0.2))
    held, started = threading.Event(), threading.Event()

    def respond_a(request: Request) -> Reply:
        reply = respond(request)
        if not started.is_set():
            reply.hold = started  # the first worker waits until the other two have joined
        return reply

    in_flight: list[Request] = []
    lock = threading.Lock()

    def respond_b(request: Request) -> Reply:
        reply = respond(request)
        with lock:
            if len(in_flight) < 1 and sum(1 for r in server_b.requests if r.delivered) >= 4:
                in_flight.append(request)
                reply.hold = held  # in flight when B is killed
        return reply

    server_a = scripted(respond_a, keys=order).start()
    server_b = scripted(respond_b, keys=order).start()
    server_c = scripted(respond, keys=order).start()
    servers = [server_a, server_b, server_c]
    db = postgres.target

    def worker(server: ScriptedServer) -> list[str]:
        return ["eval", "--resume", "three", "--db", db, "--base-url", server.base_url, "--concurrency", "2",
                "--progress-every", "0.5", "--json"]  # fmt: skip

    creating = eval_cmd(server_a.base_url, dataset, db, tmp_path / "out", "three", iterations, "--concurrency", "2")
    first = start_kflow([*creating, "--progress-every", "0.5"], env=TIMEOUT)
    wait_for(lambda: postgres.exists() and postgres.rows("SELECT count(*) FROM kf_evals")[0][0] == 1, "the evaluation")
    b = start_kflow(worker(server_b), new_session=True, env=TIMEOUT)
    c = start_kflow(worker(server_c), env=TIMEOUT)
    wait_for(lambda: server_b.requests and server_c.requests, "the other two workers", procs=(first, b, c))
    started.set()
    wait_for(lambda: bool(in_flight), "worker B's held request", procs=(first, b, c))

    # B is alive and holds the held request's problem: a resume of that thread is refused, and so is a budget
    # extension while workers run
    held_problem = order.index(in_flight[0].key)
    refused = run_kflow(["resume", f"three:{held_problem}", "--db", db])
    assert refused.returncode == 2, refused.stderr
    assert f"belongs to evaluation run three, being run by worker pid {b.pid} on" in " ".join(refused.stderr.split())
    extend = run_kflow(["eval", "--resume", "three", "--db", db, "--iterations", "6"])
    assert extend.returncode == 2 and "has workers running" in extend.stderr

    b_name = f"{os.uname().nodename}:{b.pid}"
    sql = (
        "SELECT position FROM kf_eval_items JOIN kf_leases ON kf_leases.key = kf_eval_items.claimed_by "
        "WHERE kf_leases.pid = %s AND status != 'done'"
    )
    claimed_by_b = {position for (position,) in postgres.rows(sql, b.pid)}
    assert held_problem in claimed_by_b
    os.killpg(b.pid, signal.SIGKILL)
    b.wait(timeout=30)
    held.set()  # the server now finds the client gone: the held rollout was never delivered
    outputs = {name: proc.communicate(timeout=300) for name, proc in (("a", first), ("c", c))}
    for name, proc in (("a", first), ("c", c)):
        assert proc.returncode == 0, outputs[name][1]

    # every problem done once, every rollout paid once, the held one requested again by another worker
    rows = postgres.rows("SELECT status, worker, claimed_by FROM kf_eval_items WHERE eval_id = 'three'")
    assert len(rows) == problems and {status for status, _, _ in rows} == {"done"}
    assert all(claimed is None for _, _, claimed in rows)
    delivered = paid(servers)
    assert len(delivered) == len(set(delivered)) == problems * iterations
    assert in_flight[0].aborted and not in_flight[0].delivered
    stored = postgres.rows("SELECT thread_id, iteration, worker FROM kf_rollouts")
    assert len(stored) == len({(t, i) for t, i, _ in stored}) == problems * iterations

    # the dead worker's problems were finished by the others, from where it stopped
    finishers = dict(postgres.rows("SELECT position, worker FROM kf_eval_items WHERE eval_id = 'three'"))
    a_name, c_name = f"{os.uname().nodename}:{first.pid}", f"{os.uname().nodename}:{c.pid}"
    assert all(finishers[position] in (a_name, c_name) for position in claimed_by_b)
    by_b = {(t, i) for t, i, w in stored if w == b_name}
    assert by_b and len(server_b.delivered()) == len(by_b)
    taken_over = {t for t, _, w in stored if w != b_name} & {t for t, _ in by_b}
    assert taken_over  # a problem B started has later rollouts by another worker
    assert server_a.delivered() and server_c.delivered()  # each worker used its own endpoint

    # progress and report show which worker ran what
    assert f"progress of worker {a_name} (" in outputs["a"][1]
    assert f"progress of worker {c_name} (" in outputs["c"][1]
    report = run_kflow(["report", "three", "--db", db, "--out", str(tmp_path / "rep"), "--json"])
    assert report.returncode == 0, report.stderr
    workers = {entry["worker"]: entry for entry in json.loads(report.stdout)["workers"]}
    assert set(workers) == {a_name, b_name, c_name}
    for name in (a_name, b_name, c_name):
        assert workers[name]["problems"] == sum(1 for finisher in finishers.values() if finisher == name)
    assert workers[b_name]["rollouts"] == len(by_b) and workers[a_name]["rollouts"] == len(server_a.delivered())
    assert sum(entry["problems"] for entry in workers.values()) == problems
    assert sum(entry["rollouts"] for entry in workers.values()) == problems * iterations
    shown = run_kflow(["report", "three", "--db", db, "--out", str(tmp_path / "rep")])
    assert "problems finished" in shown.stdout and b_name in shown.stdout
    assert postgres.password and str(postgres.password) not in outputs["a"][0] + outputs["a"][1] + report.stdout


def test_max_problems_stops_a_worker_and_resume_finishes(
    scripted: type[ScriptedServer], tmp_path: Path, database: Database
) -> None:
    dataset, order, _ = dataset_of(tmp_path, 5)
    server = scripted(eval_responder(changing_answer(order)), keys=order).start()
    ready = run_kflow(
        eval_cmd(server.base_url, dataset, database.target, tmp_path / "out", "part", 2, "--max-problems", "0")
    )
    assert ready.returncode == 0, ready.stderr  # created, nothing sent: the workers resume it
    assert "evaluation part is ready; its workers run it with `kflow eval --resume part" in one_line(ready.stderr)
    assert server.requests == [] and json.loads(ready.stdout)["finished"] == 0
    first = run_kflow(["eval", "--resume", "part", "--db", database.target, "--max-problems", "2", "--json"])
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    assert result["finished"] == 2 and result["status"] != "done"
    assert "this worker ran its 2 problems; 3 are left: continue with `kflow eval --resume part" in one_line(
        first.stderr
    )
    assert len(server.delivered()) == 2 * 2
    rest = run_kflow(["eval", "--resume", "part", "--db", database.target, "--json"])
    assert rest.returncode == 0, rest.stderr
    assert json.loads(rest.stdout)["finished"] == 5 and json.loads(rest.stdout)["status"] == "done"
    delivered = paid([server])
    assert len(delivered) == len(set(delivered)) == 5 * 2


def test_a_failed_problem_is_tried_once_per_worker_then_finished_by_a_working_endpoint(
    scripted: type[ScriptedServer], tmp_path: Path, postgres: Database
) -> None:
    dataset, order, _ = dataset_of(tmp_path, 3)
    broken = [scripted(lambda r: Reply(content="", status=400), keys=order).start() for _ in range(2)]
    working = scripted(eval_responder(changing_answer(order)), keys=order).start()
    db = postgres.target
    ready = run_kflow(eval_cmd(working.base_url, dataset, db, tmp_path / "out", "flaky", 2, "--max-problems", "0"))
    assert ready.returncode == 0, ready.stderr
    workers = [
        start_kflow(["eval", "--resume", "flaky", "--db", db, "--base-url", server.base_url]) for server in broken
    ]
    for worker in workers:
        _, errors = worker.communicate(timeout=300)
        assert worker.returncode == 1 and "3 problem(s) did not finish" in one_line(errors), errors
    for server in broken:  # each worker tried each problem once (a run of 2 failed rollouts), then stopped
        assert len(server.requests) <= 3 * 2 and not server.delivered()
    assert {status for (status,) in postgres.rows("SELECT status FROM kf_eval_items")} == {"failed"}
    last = run_kflow(["eval", "--resume", "flaky", "--db", db, "--base-url", working.base_url, "--json"])
    assert last.returncode == 0, last.stderr
    assert json.loads(last.stdout)["finished"] == 3 and len(working.delivered()) == 3 * 2


def make_eval(store: Any, eval_id: str, problems: int) -> None:
    now = "2026-01-01T00:00:00"
    row = EvalRow(eval_id=eval_id, created_at=now, updated_at=now, finished_at=None, status="running",
                  dataset="d", dataset_hash="h", manifest_json="{}")  # fmt: skip
    items = [
        EvalItemRow(eval_id=eval_id, position=p, problem_id=str(p), thread_id=f"{eval_id}:{p}", problem="p", gold="1")
        for p in range(problems)
    ]
    EvalStore(store).create_eval(row, items)


def test_claims_never_overlap_and_a_silent_remote_worker_loses_its_problems(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = get_store(database.target)
    make_eval(store, "claims", 40)
    # a worker on another host took problems 0 and 1, then went silent: they are free once its heartbeat is
    # older than its timeout (1 s)
    with store.session() as session:
        session.add(LeaseRow(key="worker:claims:remote", token="t", pid=1, host="another-node", taken_at="then",
                             heartbeat=db_clock(), timeout=1.0))  # fmt: skip
    with store.session() as session:
        for position in (0, 1):
            item = session.get(EvalItemRow, ("claims", position))
            assert item is not None
            item.claimed_by = "worker:claims:remote"
    started = time.monotonic()

    # four workers claim at once, one problem at a time: no problem is claimed twice
    leases = [join(store, "claims") for _ in range(4)]
    got: list[list[int]] = [[] for _ in leases]

    def take(index: int) -> None:
        while True:
            items = claim(store, "claims", leases[index], 1)
            if not items:
                return
            got[index] += [item.position for item in items]

    threads = [threading.Thread(target=take, args=(i,)) for i in range(len(leases))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    taken = [p for positions in got for p in positions]
    if time.monotonic() - started < 1.0:  # the remote worker's claims were still live: not taken
        assert sorted(taken) == list(range(2, 40))
        assert claimed_elsewhere(store, "claims", leases[0]) == 40 - len(got[0])  # the others' and the remote's
    while time.monotonic() - started < 1.5:
        time.sleep(0.1)
    late = claim(store, "claims", leases[0], 10)
    assert sorted([*taken, *(item.position for item in late)]) == list(range(40))
    assert len(set(taken)) == len(taken)

    # a live worker keeps its claims past its timeout: its heartbeat renews them
    for lease, positions in zip(leases, got, strict=True):
        release(store, "claims", positions, lease)
    release(store, "claims", [item.position for item in late], leases[0])
    monkeypatch.setenv("KFLOW_HEARTBEAT_TIMEOUT", "1")
    live = acquire(store, "worker:claims:live")
    assert {item.position for item in claim(store, "claims", live, 2)} == {0, 1}
    assert sorted(item.position for item in claim(store, "claims", leases[1], 100)) == list(range(2, 40))
    time.sleep(2.5)
    assert claim(store, "claims", leases[1], 10) == []
    assert claimed_elsewhere(store, "claims", leases[1]) == 2
    live.release()  # its claims are free as soon as it is gone
    assert {item.position for item in claim(store, "claims", leases[1], 10)} == {0, 1}
    for lease in leases:
        lease.release()
