"""SIGKILL a TRT run in the middle of a round, then `kflow resume`: stored rollouts and stored calls (the
planning call, the reflection, the manager) are not paid for again."""

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
from tests.integration.trt_support import TrtModel, kind_of, manage_reply, plan_reply, reflect_reply, technique_of
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


class HoldB2:
    """Holds round 2's thinker B2 (its reply waits until the client has been killed)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.held: list[Request] = []

    def __call__(self, request: Request) -> threading.Event | None:
        if kind_of(request) == "solve" and technique_of(request) == "B2" and not self.event.is_set():
            self.held.append(request)
            return self.event
        return None


def kill_mid_round_two(server: ScriptedServer, db: Path, inputs: dict[str, object], hold: HoldB2) -> None:
    """Run the graph in a process until round 2's A2 is stored and B2 is in flight, SIGKILL it, then let the
    server find the client gone (the held reply is not delivered)."""
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
            json.dumps({"problem": PROBLEM, "model": "scripted-model", **inputs}),
        ],
        env=kflow_env(),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    wait_for(lambda: bool(hold.held) and stored(db, "1:0"), proc, "the middle of round 2")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    time.sleep(0.2)
    hold.event.set()
    deadline = time.monotonic() + 10
    while hold.held[0].ended is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert hold.held[0].aborted


def test_sigkill_mid_round_then_resume(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    hold = HoldB2()
    model = TrtModel(
        plan=plan_reply("A", "B"),
        reflect=[reflect_reply(["A2", "B2"], "one"), reflect_reply(["A3", "B3"])],
        solve={"A": ("5", -0.1), "B": ("7", -1.0), "A2": ("5", -0.1), "B2": ("5", -0.3), "A3": ("5", -0.1)},
        hold=hold,
    )
    model.solve = {**model.solve, "B3": ("5", -0.2)}
    server = scripted(model).start()
    db = tmp_path / "crash.db"
    kill_mid_round_two(server, db, {"strategy": "trt", "thinkers": 2, "iterations": 3}, hold)

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


def test_sigkill_mid_round_with_the_manager_then_resume(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    hold = HoldB2()
    model = TrtModel(
        plan=plan_reply("A", "B"),
        manage=[manage_reply(1, ["A2", "B2"], "one"), manage_reply(3, ["A3", "B3"]), manage_reply(1)],
        solve={"A": ("5", -0.1), "B": ("7", -1.0), "A2": ("5", -0.1), "B2": ("6", -0.3)},
        hold=hold,
    )
    model.solve = {**model.solve, "A3": ("5", -0.1), "B3": ("5", -0.2)}
    server = scripted(model).start()
    db = tmp_path / "crash.db"
    kill_mid_round_two(server, db, {"strategy": "trt", "select_rule": "manager", "iterations": 3}, hold)

    resumed = run_kflow(["resume", "t", "--db", str(db), "--base-url", server.base_url, "--json"])
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads(resumed.stdout)
    # round 2: the manager picks solution 3 (B2's 6) over the previous best (5) and A2; round 3 keeps it
    assert result["status"] == "done" and result["answers"] == ["5", "6", "6"]

    sent = [(kind_of(r), technique_of(r)) for r in server.requests]
    assert sent.count(("solve", "B2")) == 2 and sent.count(("solve", "A2")) == 1
    assert sent.count(("plan", None)) == 1 and sent.count(("manage", None)) == 3 and ("reflect", None) not in sent
    delivered = [str((kind_of(r), technique_of(r))) for r in server.requests if r.delivered]
    paid_once = [("plan", None), *[("solve", t) for t in ("A", "B", "A2", "B2", "A3", "B3")], *[("manage", None)] * 3]
    assert sorted(delivered) == sorted(map(str, paid_once))
    with sqlite3.connect(db) as conn:
        calls = [row[0] for row in conn.execute("SELECT id FROM kf_calls ORDER BY iteration, kind")]
        kept = conn.execute("SELECT iteration, kept_previous FROM kf_selections ORDER BY iteration").fetchall()
    assert [c.split(":", 1)[1] for c in calls] == ["0:manage", "0:plan", "1:manage", "2:manage"]
    assert kept == [(0, 0), (1, 0), (2, 1)]
