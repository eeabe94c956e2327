"""A hostile endpoint (`tests.support.hostile_server`) against real `kflow solve`, `kflow eval` and resume
processes: for every case, no traceback, the documented exit code, a stored rollout or a failed one with its
reason, nothing secret in the database, the files written, stdout or stderr, no escape sequence shown, no run
or problem left running; then the endpoint heals and `kflow resume` / `kflow eval --resume` finish the work.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import pytest

from tests.conftest import run_kflow
from tests.support.hostile_server import (
    ANSWER,
    CASES,
    EXTRAS_CASES,
    KEY,
    PREFIXES,
    QUERY_KEY,
    STREAM_CASES,
    Case,
    Switch,
    url_of,
)
from tests.support.scripted_server import ScriptedServer
from tests.support.stored import stored_bytes

#: What a terminal would act on: escape sequences, C1 controls, bidirectional overrides and isolates.
UNPRINTABLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
#: A short request timeout for the replies that never end (a failed rollout takes 3 of them), else a long one.
SHORT, LONG = ["--request-timeout", "3"], ["--request-timeout", "120"]
LIMITS = ["--max-retries", "1", "--max-new-tokens", "64"]
DEEPCONF = ["--strategy", "deepconf", "--warmup-traces", "2", "--thinkers", "2", "--top-logprobs", "2"]
Run = subprocess.CompletedProcess[str]


def options_of(case: Case) -> list[str]:
    return [*(SHORT if case.slow else LONG), *LIMITS, *(DEEPCONF if case.stream else [])]


def in_parallel(jobs: Sequence[Callable[[], Run]]) -> list[Run]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda job: job(), jobs))


def shown_safely(proc: Run, what: str) -> None:
    """No traceback, nothing a terminal would act on, no secret, in what a command printed."""
    printed = proc.stdout + proc.stderr
    assert "Traceback" not in printed, (what, proc.stderr[-2000:])
    assert not UNPRINTABLE.search(printed), (what, UNPRINTABLE.findall(printed)[:5])
    assert not [prefix for prefix in PREFIXES if prefix in printed], what


def nothing_secret_stored(folder: Path) -> None:
    """No secret in any file under `folder` (as bytes), nor in any value of its databases (decompressed)."""
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes() + (stored_bytes(path) if path.suffix == ".db" else b"")
            assert not [p for p in PREFIXES if p.encode() in data], path


def statuses(db: Path, table: str, column: str = "status") -> list[str]:
    with sqlite3.connect(db) as conn:
        return [row[0] for row in conn.execute(f"SELECT {column} FROM {table}")]


def rollout_errors(db: Path, problem: str | None = None) -> list[str | None]:
    query = "SELECT r.error FROM kf_rollouts r JOIN kf_runs u ON r.run_id = u.run_id"
    with sqlite3.connect(db) as conn:
        rows = conn.execute(query + (" WHERE u.problem = ?" if problem else ""), (problem,) if problem else ())
        return [row[0] for row in rows]


def keys_reached_the_endpoint(server: ScriptedServer) -> None:
    """The key of the URL's user-info went as the bearer token, the query's parameters with every request."""
    assert server.requests
    for request in server.requests:
        assert request.headers.get("authorization") == f"Bearer {KEY}"
        assert request.query == {"api-key": QUERY_KEY, "tenant": "team-a"}


def start(scripted: type[ScriptedServer], cases: tuple[Case, ...]) -> tuple[ScriptedServer, Switch]:
    switch = Switch(cases)
    return scripted(switch, keys=switch.keys, extras=switch.extras).start(), switch


#: The cases in groups of a few (each group: one test, its solves and resumes in parallel).
GROUPS = {
    "replies": CASES[:11],
    "more-replies": CASES[11:],
    "streams": STREAM_CASES,
    "extras": EXTRAS_CASES,
}


@pytest.mark.parametrize("group", list(GROUPS))
def test_every_hostile_reply_in_solve_then_resume(scripted: type[ScriptedServer], tmp_path: Path, group: str) -> None:
    cases = GROUPS[group]
    main, main_switch = start(scripted, tuple(c for c in cases if not c.extras))
    servers = {case.name: start(scripted, (case,)) for case in cases if case.extras}
    port = {case.name: (servers[case.name][0] if case.extras else main).port for case in cases}

    def db_of(case: Case) -> Path:
        (tmp_path / case.name).mkdir(exist_ok=True)
        return tmp_path / case.name / "run.db"

    def solve(case: Case) -> Callable[[], Run]:
        args = ["solve", case.problem, "--base-url", url_of(port[case.name]), "--model", "m", "--iterations", "1"]
        return lambda: run_kflow([*args, "--thread-id", "t", "--db", str(db_of(case)), *options_of(case)])

    def resume(case: Case) -> Callable[[], Run]:
        return lambda: run_kflow(["resume", "t", "--db", str(db_of(case)), "--base-url", url_of(port[case.name])])

    solved = dict(zip([c.name for c in cases], in_parallel([solve(c) for c in cases]), strict=True))
    for case in cases:
        proc, db = solved[case.name], db_of(case)
        assert proc.returncode == case.exit_code, (case.name, proc.stderr[-2000:])
        shown_safely(proc, case.name)
        assert statuses(db, "kf_runs") == ["done" if case.usable else "failed"], case.name
        errors = rollout_errors(db)
        if case.usable:
            assert errors and all(error is None for error in errors), (case.name, errors)
        elif case.stops:  # the endpoint failed for good: the run stopped, the reason shown
            assert case.reason in " ".join(proc.stderr.split()), (case.name, proc.stderr)
            assert "kflow resume t" in " ".join(proc.stderr.split())
        else:  # every rollout failed, with its reason
            assert errors and all(case.reason in (error or "") for error in errors), (case.name, errors)
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT base_url FROM kf_runs").fetchone()[0] == (
                f"http://127.0.0.1:{port[case.name]}/v1?api-key=[REDACTED]&tenant=team-a"
            )
        # retried like other unusable responses: 3 requests for the failed rollout; a refused one is not retried
        sent = [r for r in main.requests if r.key == case.problem]
        if not case.usable and not case.stops and not case.stream:
            assert len(sent) == (1 if case.name == "refused-ansi" else 3), (case.name, len(sent))

    # a run the endpoint stopped is failed; `show` says by what (LangGraph kept the error with the checkpoint)
    stopped = [case for case in cases if case.stops]
    shows = in_parallel([partial(run_kflow, ["show", "t", "--db", str(db_of(case))]) for case in stopped])
    for case, proc in zip(stopped, shows, strict=True):
        assert proc.returncode == 0, proc.stderr
        shown_safely(proc, f"show {case.name}")
        text = " ".join(proc.stdout.split())
        assert "status failed" in text and "stopped by an error: EndpointError" in text and case.reason in text, text

    for switch in [main_switch, *(s for _, s in servers.values())]:
        switch.heal()
    resumed = dict(zip([c.name for c in cases], in_parallel([resume(c) for c in cases]), strict=True))
    for case in cases:
        proc, db = resumed[case.name], db_of(case)
        assert proc.returncode == 0, (case.name, proc.stderr[-2000:])
        shown_safely(proc, f"{case.name} resumed")
        assert statuses(db, "kf_runs") == ["done"], case.name
        if not case.usable and not case.stream:
            assert statuses(db, "kf_runs", "final_answer") == [ANSWER], case.name
    for server in [*([main] if main_switch.cases else []), *(s for s, _ in servers.values())]:
        keys_reached_the_endpoint(server)
    nothing_secret_stored(tmp_path)


def test_every_hostile_reply_in_eval_then_resume(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    main, main_switch = start(scripted, CASES + STREAM_CASES)
    servers = {case.name: start(scripted, (case,)) for case in EXTRAS_CASES}
    groups: dict[str, tuple[tuple[Case, ...], int, list[str]]] = {
        "plain": (tuple(c for c in CASES if not c.slow), main.port, [*LONG, *LIMITS]),
        "slow": (tuple(c for c in CASES if c.slow), main.port, [*SHORT, *LIMITS]),
        "stream": (STREAM_CASES, main.port, [*SHORT, *LIMITS, *DEEPCONF]),
        **{case.name: ((case,), servers[case.name][0].port, [*LONG, *LIMITS]) for case in EXTRAS_CASES},
    }

    def evaluate(name: str) -> Callable[[], Run]:
        cases, port, options = groups[name]
        folder = tmp_path / name
        folder.mkdir()
        dataset = folder / "set.jsonl"
        dataset.write_text("\n".join(json.dumps({"id": c.name, "problem": c.problem, "answer": ANSWER}) for c in cases))
        args = ["eval", "--dataset", str(dataset), "--base-url", url_of(port), "--model", "m", "--iterations", "1"]
        return lambda: run_kflow(
            [*args, "--db", str(folder / "e.db"), "--output-dir", str(folder / "out"), "--run-id", name, *options]
        )

    def resume(name: str) -> Callable[[], Run]:
        folder, port = tmp_path / name, groups[name][1]
        return lambda: run_kflow(
            ["eval", "--resume", name, "--db", str(folder / "e.db"), "--base-url", url_of(port), "--json"]
        )

    names = list(groups)
    first = dict(zip(names, in_parallel([evaluate(name) for name in names]), strict=True))
    for name in names:
        cases, _, _ = groups[name]
        proc, db = first[name], tmp_path / name / "e.db"
        assert proc.returncode == max(c.exit_code for c in cases), (name, proc.stderr[-2000:])
        shown_safely(proc, name)
        assert "running" not in statuses(db, "kf_evals") + statuses(db, "kf_eval_items") + statuses(db, "kf_runs")
        with sqlite3.connect(db) as conn:
            items = dict(conn.execute("SELECT problem_id, status FROM kf_eval_items").fetchall())
            errors = dict(conn.execute("SELECT problem_id, error FROM kf_eval_items").fetchall())
        for case in cases:
            assert items[case.name] == ("done" if case.usable else "failed"), (name, case.name)
            if case.stops:
                assert case.reason in (errors[case.name] or ""), (case.name, errors[case.name])
            elif not case.usable:
                assert all(case.reason in (e or "") for e in rollout_errors(db, case.problem)), case.name

    # what was stored from the hostile replies (and the reasons of those that failed) is shown safely
    db = tmp_path / "plain" / "e.db"
    position = {case.name: index for index, case in enumerate(groups["plain"][0])}
    shows = [(name, as_json) for name in ("echo-key", "ansi-content", "refused-ansi") for as_json in (False, True)]
    shown = in_parallel(
        [
            partial(run_kflow, ["show", f"plain:{position[name]}", "--db", str(db), "--texts", *(["--json"] * as_json)])
            for name, as_json in shows
        ]
    )
    for (name, as_json), proc in zip(shows, shown, strict=True):
        assert proc.returncode == 0, (name, proc.stderr)
        shown_safely(proc, f"show {name}")
        if as_json and name == "echo-key":
            assert "[REDACTED]" in json.loads(proc.stdout)["rollouts"][0]["content"]
        if as_json and name == "ansi-content":  # an integer holding escape codes is no integer
            assert json.loads(proc.stdout)["rollouts"][0]["answer"] is None

    for switch in [main_switch, *(s for _, s in servers.values())]:
        switch.heal()
    resumed = dict(zip(names, in_parallel([resume(name) for name in names]), strict=True))
    for name in names:
        cases, _, _ = groups[name]
        proc, db = resumed[name], tmp_path / name / "e.db"
        assert proc.returncode == 0, (name, proc.stderr[-2000:])
        shown_safely(proc, f"{name} resumed")
        assert json.loads(proc.stdout)["finished"] == len(cases)
        assert set(statuses(db, "kf_eval_items")) == {"done"} and set(statuses(db, "kf_runs")) == {"done"}
        assert list((tmp_path / name / "out").rglob("predictions_0.json")), name
    listings = in_parallel(
        [
            partial(run_kflow, args)
            for name in names
            for args in (
                ["report", name, "--db", str(tmp_path / name / "e.db"), "--out", str(tmp_path / name / "report")],
                ["threads", "--db", str(tmp_path / name / "e.db")],
            )
        ]
    )
    for proc in listings:
        assert proc.returncode == 0, proc.stderr
        shown_safely(proc, " ".join(proc.args[3:5]))
    for server in [main, *(s for s, _ in servers.values())]:
        keys_reached_the_endpoint(server)
    nothing_secret_stored(tmp_path)


def test_trt_calls_meet_the_same_treatment(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    """Planning, reflection (and their rollouts) against replies that cannot be used, and against a reply that
    repeats the keys: failed calls are stored with their reason, echoed keys never are."""
    cases = {case.name: case for case in CASES if case.name in ("html-200", "echo-key")}
    server, switch = start(scripted, tuple(cases.values()))
    trt = ["--strategy", "trt", "--thinkers", "2", "--iterations", "2", *LONG, *LIMITS]

    def run(name: str, command: str) -> Callable[[], Run]:
        db = tmp_path / f"{name}.db"
        if command == "solve":
            args = ["solve", cases[name].problem, "--model", "m", "--thread-id", "t", *trt]
        else:
            args = ["resume", "t"]
        return partial(run_kflow, [*args, "--db", str(db), "--base-url", url_of(server.port)])

    first = dict(zip(cases, in_parallel([run(name, "solve") for name in cases]), strict=True))
    for name, proc in first.items():
        assert proc.returncode == cases[name].exit_code, (name, proc.stderr[-2000:])
        shown_safely(proc, name)
        with sqlite3.connect(tmp_path / f"{name}.db") as conn:
            calls = conn.execute("SELECT kind, error FROM kf_calls ORDER BY iteration").fetchall()
        assert [kind for kind, _ in calls] == ["plan", "reflect"], name
        if cases[name].usable:
            assert all(error is None for _, error in calls), calls
        else:
            assert all("is not JSON" in (error or "") for _, error in calls), calls
    switch.heal()
    for name, proc in zip(cases, in_parallel([run(name, "resume") for name in cases]), strict=True):
        assert proc.returncode == 0, (name, proc.stderr[-2000:])
        shown_safely(proc, f"{name} resumed")
        assert statuses(tmp_path / f"{name}.db", "kf_runs") == ["done"]
    keys_reached_the_endpoint(server)
    nothing_secret_stored(tmp_path)
