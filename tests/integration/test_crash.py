"""SIGKILL `kflow solve` while a request is in flight, then `kflow resume`."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

from tests.conftest import run_kflow, start_kflow
from tests.integration.scripts import ANSWERS, EXPECTED_PROMPTS, PAPER_SET, PROBLEM, SCRIPT
from tests.support.databases import Database
from tests.support.scripted_server import Reply, Request, ScriptedServer, script_responder

KILL_AT = 3


def solve_args(server: ScriptedServer, db: Path | Database, thread: str) -> list[str]:
    return [
        "solve",
        PROBLEM,
        "--base-url",
        server.base_url,
        "--iterations",
        str(len(SCRIPT)),
        "--prompts",
        PAPER_SET,
        "--thread-id",
        thread,
        "--db",
        str(db),
        "--json",
    ]


def test_sigkill_in_flight_then_resume(scripted: type[ScriptedServer], tmp_path: Path, database: Database) -> None:
    # the reference: an uninterrupted run
    reference_server = scripted(script_responder({"default": SCRIPT})).start()
    reference = run_kflow(solve_args(reference_server, tmp_path / "ref.db", "t"))
    assert reference.returncode == 0, reference.stderr

    hold = threading.Event()
    base = script_responder({"default": SCRIPT})

    def respond(request: Request) -> Reply:
        reply = base(request)
        if request.index == KILL_AT and not hold.is_set():
            reply.hold = hold
        return reply

    server = scripted(respond).start()
    db = database.target
    proc = start_kflow(solve_args(server, database, "t"), new_session=True)
    deadline = time.monotonic() + 120
    while not any(r.index == KILL_AT for r in server.requests):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never reached the rollout to kill at"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    time.sleep(0.2)
    hold.set()  # the server now finds the client gone and does not count the reply as delivered
    deadline = time.monotonic() + 10
    while server.requests[-1].ended is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.requests[-1].aborted

    resumed = run_kflow(["resume", "t", "--db", db, "--base-url", server.base_url, "--json"])
    assert resumed.returncode == 0, resumed.stderr
    expected = {k: v for k, v in json.loads(reference.stdout).items() if k != "run_id"}
    assert {k: v for k, v in json.loads(resumed.stdout).items() if k != "run_id"} == expected
    assert json.loads(resumed.stdout)["answers"] == ANSWERS

    delivered = server.delivered()
    assert [r.index for r in delivered] == list(range(len(SCRIPT)))  # no completed rollout requested twice
    assert [r.prompt for r in delivered] == EXPECTED_PROMPTS
    assert len(server.requests) == len(SCRIPT) + 1  # only the killed request was sent again
