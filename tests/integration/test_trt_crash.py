"""SIGKILL a TRT run in the middle of a round, then `kflow resume`: stored rollouts and stored calls (the
planning call, the reflection) are not paid for again."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.conftest import REPO, kflow_env, run_kflow
from tests.integration.strategy_support import PROBLEM
from tests.integration.trt_support import TrtModel, kind_of, plan_reply, reflect_reply, technique_of
from tests.support.scripted_server import Request, ScriptedServer


def stored(db: Path, rollout: str) -> bool:
    try:
        with sqlite3.connect(db) as conn:
            return conn.execute("SELECT 1 FROM kf_rollouts WHERE id LIKE ?", (f"%:{rollout}",)).fetchone() is not None
    except sqlite3.Error:
        return False


def wait_for(condition: object, proc: subprocess.Popen[str], what: str) -> None:
    deadline = time.monotonic() + 120
    while not condition():  # type: ignore[operator]
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"the run never reached {what}"
        time.sleep(0.05)


def test_sigkill_mid_round_then_resume(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    hold = threading.Event()
    held: list[Request] = []

    def hold_second_round_thinker(request: Request) -> threading.Event | None:
        # round 2 (after the reflection): thinker B2 is held until the client is killed
        if kind_of(request) == "solve" and technique_of(request) == "B2" and not hold.is_set():
            held.append(request)
            return hold
        return None

    model = TrtModel(
        plan=plan_reply("A", "B"),
        reflect=[reflect_reply(["A2", "B2"], "one"), reflect_reply(["A3", "B3"])],
        solve={"A": ("5", -0.1), "B": ("7", -1.0), "A2": ("5", -0.1), "B2": ("5", -0.3), "A3": ("5", -0.1)},
        hold=hold_second_round_thinker,
    )
    model.solve = {**model.solve, "B3": ("5", -0.2)}
    server = scripted(model).start()
    db = tmp_path / "crash.db"
    inputs = {"problem": PROBLEM, "model": "scripted-model", "strategy": "trt", "thinkers": 2, "iterations": 3}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.graph_script",
            "--base-url",
            server.base_url,
            "--db",
            str(db),
            "--thread",
            "t",
            "--inputs",
            json.dumps(inputs),
        ],
        env=kflow_env(),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    # round 2's thinker A2 is answered and stored; B2 is in flight
    wait_for(lambda: bool(held) and stored(db, "1:0"), proc, "the middle of round 2")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    time.sleep(0.2)
    hold.set()  # the server now finds the client gone: the held reply is not delivered
    deadline = time.monotonic() + 10
    while held[0].ended is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert held[0].aborted

    resumed = run_kflow(["resume", "t", "--db", str(db), "--base-url", server.base_url, "--json"])
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads(resumed.stdout)
    assert result["status"] == "done" and result["answers"] == ["5", "5", "5"]

    delivered = [(kind_of(r), technique_of(r)) for r in server.requests if r.delivered]
    # every call and rollout was paid for once: the planning call, round 1, the first reflection and round
    # 2's A2 were not requested again after the crash; only the killed B2 was sent twice
    assert sorted(map(str, delivered)) == sorted(
        map(
            str,
            [
                ("plan", None),
                ("solve", "A"),
                ("solve", "B"),
                ("reflect", None),
                ("solve", "A2"),
                ("solve", "B2"),
                ("reflect", None),
                ("solve", "A3"),
                ("solve", "B3"),
            ],
        )
    )
    sent = [(kind_of(r), technique_of(r)) for r in server.requests]
    assert sent.count(("solve", "B2")) == 2 and sent.count(("solve", "A2")) == 1
    assert sent.count(("plan", None)) == 1 and sent.count(("reflect", None)) == 2
    with sqlite3.connect(db) as conn:
        kinds = [row[0] for row in conn.execute("SELECT kind FROM kf_calls ORDER BY iteration")]
    assert kinds == ["plan", "reflect", "reflect"]
