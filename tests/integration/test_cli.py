"""`kflow` as a user runs it: a subprocess against the scripted HTTP server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_kflow, scripted_server
from tests.integration.scripts import ANSWERS, EXPECTED_PROMPTS, PAPER_SET, PROBLEM, SCRIPT, VISIBLE_AT_END
from tests.support.scripted_server import ScriptedServer

SECRET = "sk-test-SECRET-4b1d9e"


def test_solve_json_show_threads(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    server = scripted_server(scripted, {"default": SCRIPT})
    db = tmp_path / "runs.db"
    proc = run_kflow(
        [
            "solve",
            PROBLEM,
            "--base-url",
            server.base_url,
            "--model",
            "scripted-model",
            "--iterations",
            "8",
            "--prompts",
            PAPER_SET,
            "--thread-id",
            "cli-1",
            "--db",
            str(db),
            "--json",
        ],
        env={"KFLOW_API_KEY": SECRET},
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["thread_id"] == "cli-1"
    assert result["status"] == "done"
    assert result["final_answer"] == "7"
    assert result["answers"] == ANSWERS
    assert result["knowledge"] == VISIBLE_AT_END
    assert result["iterations_done"] == 8
    assert result["usage"]["prompt_tokens"] > 0 and result["usage"]["completion_tokens"] > 0
    assert "rollout 7: answer 7" in proc.stderr
    assert [r.prompt for r in server.requests] == EXPECTED_PROMPTS
    assert all(r.headers.get("authorization") == f"Bearer {SECRET}" for r in server.requests)

    # the key is in no file the run wrote, and not in the output
    for path in tmp_path.iterdir():
        assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in proc.stderr + proc.stdout

    shown = run_kflow(["show", "cli-1", "--db", str(db), "--json"])
    assert shown.returncode == 0, shown.stderr
    detail = json.loads(shown.stdout)
    assert [r["answer"] for r in detail["rollouts"]] == ANSWERS
    assert [r["changed"] for r in detail["rollouts"]] == [None, True, False, True, True, True, True, False]
    assert detail["rollouts"][1]["knowledge_added"]["wrong_answer"] == "5"
    assert detail["params"]["iterations"] == 8
    assert "content" not in detail["rollouts"][0]
    table = run_kflow(["show", "cli-1", "--db", str(db)])
    assert table.returncode == 0 and "final answer: 7" in table.stdout

    # the full texts, stored compressed, read back
    full = json.loads(run_kflow(["show", "cli-1", "--db", str(db), "--json", "--texts"]).stdout)
    assert [r["content"] for r in full["rollouts"]] == SCRIPT
    assert [r["messages"][0]["content"] for r in full["rollouts"]] == EXPECTED_PROMPTS
    assert full["rollouts"][1]["summary"] == "S1: counted 7."
    texts = run_kflow(["show", "cli-1", "--db", str(db), "--texts"])
    assert texts.returncode == 0 and "[user]" in texts.stdout and "[output]" in texts.stdout
    assert "S6: seven." in texts.stdout

    listing = run_kflow(["threads", "--db", str(db), "--json"])
    assert listing.returncode == 0
    runs = json.loads(listing.stdout)
    assert [(r["thread_id"], r["status"], r["iterations_done"]) for r in runs] == [("cli-1", "done", 8)]


def test_env_defaults(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    server = scripted_server(scripted, {"default": SCRIPT})
    db = tmp_path / "env.db"
    proc = run_kflow(
        ["solve", PROBLEM, "--iterations", "2", "--thread-id", "e", "--json"],
        env={"KFLOW_BASE_URL": server.base_url, "KFLOW_MODEL": "env-model", "KFLOW_DB": str(db)},
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["answers"] == ANSWERS[:2]
    assert server.requests[0].body["model"] == "env-model"
    assert db.is_file()


def test_resume_of_finished_thread_sends_nothing(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    server = scripted_server(scripted, {"default": SCRIPT})
    db = tmp_path / "r.db"
    first = run_kflow(
        [
            "solve",
            PROBLEM,
            "--base-url",
            server.base_url,
            "--iterations",
            "2",
            "--thread-id",
            "d",
            "--db",
            str(db),
            "--json",
        ]
    )
    assert first.returncode == 0, first.stderr
    again = run_kflow(["resume", "d", "--db", str(db), "--json"])
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["answers"] == ANSWERS[:2]
    assert len(server.requests) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["solve", "p", "--iterations", "0"], "iterations must be between"),
        (["solve", "p", "--iterations", "-2"], "iterations must be between"),
        (["solve", "p", "--strategy", "magic"], "unknown strategy"),
        (["solve", "p", "--base-url", "not a url"], "--base-url must be an http(s) URL"),
        (["solve", "p", "--base-url", "ftp://x/v1"], "--base-url must be an http(s) URL"),
        (["solve", "p", "--answer-type", "float"], "answer_type must be one of"),
        (["solve", "p", "--select-rule", "manager"], "select_rule manager needs a strategy with a manager prompt"),
        (["solve", "p", "--strategy", "trt", "--select-rule", "judge"], "select_rule must be one of"),
        (["solve", "  "], "the problem is empty"),
        (["solve", "p", "--db", "/nonexistent-folder/x.db"], "does not exist"),
        (["resume", "nope", "--db", "DB"], "no run on thread 'nope'"),
        (["show", "nope", "--db", "/nonexistent-folder/x.db"], "does not exist"),
        (["threads", "--db", "MISSING"], "does not exist"),
    ],
)
def test_bad_input_exit_2_and_nothing_written(tmp_path: Path, args: list[str], message: str) -> None:
    db = tmp_path / "existing.db"
    if "DB" in args:
        ok = run_kflow(["threads", "--db", str(db)])  # does not exist yet: an error, nothing created
        assert ok.returncode == 2 and not db.exists()
        from knowledge_flow.persistence import get_store

        get_store(db)  # an empty database
    args = [str(db) if a == "DB" else str(tmp_path / "missing.db") if a == "MISSING" else a for a in args]
    before = sorted(p.name for p in tmp_path.iterdir())
    if args[0] == "solve" and "--db" not in args:
        args += ["--db", str(tmp_path / "new.db")]
    proc = run_kflow(args, env={"KFLOW_BASE_URL": "http://127.0.0.1:9/v1"})
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert message in " ".join(proc.stderr.split())
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_unreachable_endpoint_is_a_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "down.db"
    proc = run_kflow(
        [
            "solve",
            PROBLEM,
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--iterations",
            "2",
            "--thread-id",
            "down",
            "--db",
            str(db),
            "--max-retries",
            "1",
        ],
        env={},
    )
    assert proc.returncode == 1
    text = " ".join(proc.stderr.split())
    assert "failed" in text and "kflow resume down" in text
    assert "Traceback" not in proc.stderr


def test_control_characters_from_model_are_escaped(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    hostile = "[Summary]: \x1b[2J\x1b]0;pwned\x07 sneaky\n[Answer]: \\boxed{\x1b[31m42}"
    server = scripted_server(scripted, {"default": [hostile]})
    db = tmp_path / "h.db"
    proc = run_kflow(
        ["solve", PROBLEM, "--base-url", server.base_url, "--iterations", "1", "--thread-id", "h", "--db", str(db)]
    )
    assert proc.returncode == 0, proc.stderr
    shown = run_kflow(["show", "h", "--db", str(db)])
    for text in (proc.stdout, proc.stderr, shown.stdout):
        assert "\x1b" not in text and "\x07" not in text
