"""Files, templates, standard input and databases from outside, as an attacker or a careless user hands them
over: each ends with one line on stderr, the documented exit code, nothing written and no request sent (or,
for a failure in the middle of a run, what is complete kept and a resume that works). Real subprocesses, real
files (FIFOs, devices, a size-limited process for a full disk, a process without the right to override file
permissions for a read-only database) and the scripted HTTP server."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, kflow_env, run_kflow
from tests.integration.scripts import PAPER_SET
from tests.integration.test_reliability import changing_answer, dataset_of, eval_cmd
from tests.support.eval_script import eval_responder
from tests.support.scripted_server import Reply, Request, ScriptedServer, kf_output, script_responder

PROBLEM = "How many positive divisors does 36 have?"
TEMPLATE_START = "first = '''\n{{ problem }}"


def one_line_error(proc: subprocess.CompletedProcess[Any], *, after_progress: bool = False) -> str:
    """The single line the command wrote on stderr (asserted to be one line, an error, no traceback); with
    `after_progress`, the one error line that ends the run's progress lines."""
    stderr = proc.stderr if isinstance(proc.stderr, str) else proc.stderr.decode()
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert "Traceback" not in stderr and len(errors) == 1 and lines[-1] == errors[0], stderr
    assert after_progress or len(lines) == 1, stderr
    return errors[0]


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def solve_args(url: str, db: Path, *extra: str) -> list[str]:
    return ["solve", PROBLEM, "--base-url", url, "--iterations", "2", "--db", str(db), "--model", "m", *extra]


# --- files handed to options ---------------------------------------------------------------------------------


def special_file(tmp_path: Path, kind: str) -> Path:
    if kind == "dev-zero":
        return Path("/dev/zero")
    if kind == "fifo":
        path = tmp_path / "pipe.toml"
        os.mkfifo(path)
        return path
    if kind == "link-to-dev-zero":
        path = tmp_path / "zero.toml"
        path.symlink_to("/dev/zero")
        return path
    if kind == "folder":
        path = tmp_path / "folder.toml"
        path.mkdir()
        return path
    if kind == "huge":
        path = tmp_path / "huge.toml"
        path.write_text("# " + "x" * (2 << 20) + "\n")
        return path
    if kind == "binary":
        path = tmp_path / "binary.toml"
        path.write_bytes(b'name = "x"\n\xff\xfe\x00 binary')
        return path
    if kind == "nested":
        path = tmp_path / "nested.toml"
        path.write_text("x = " + "[" * 50_000 + "]" * 50_000 + "\n")
        return path
    raise AssertionError(kind)


PROMPT_FILES = {
    "dev-zero": "is not a file: it is a character device",
    "fifo": "is not a file: it is a FIFO",
    "link-to-dev-zero": "is not a file: it is a character device",
    "folder": "is not a file: it is a folder",
    "huge": "is larger than 1 MiB",
    "binary": "is not UTF-8 text",
    "nested": "is not valid TOML",
}


@pytest.mark.parametrize("kind", list(PROMPT_FILES), ids=list(PROMPT_FILES))
def test_hostile_prompt_set_files_are_refused(scripted: type[ScriptedServer], tmp_path: Path, kind: str) -> None:
    server = scripted(script_responder({"default": [kf_output("1", "s")]})).start()
    path = special_file(tmp_path, kind)
    before = files_in(tmp_path)
    proc = run_kflow(solve_args(server.base_url, tmp_path / "p.db", "--prompts", str(path)), timeout=120)
    assert proc.returncode == 2
    assert PROMPT_FILES[kind] in one_line_error(proc)
    assert files_in(tmp_path) == before and server.requests == []


DATASET_FILES = {
    "dev-zero": ("/dev/zero", "is not a file: it is a character device"),
    "fifo": ("pipe.jsonl", "is not a file: it is a FIFO"),
    "link": ("zero.jsonl", "is not a file: it is a character device"),
    "surrogate": ("lone.jsonl", "is not UTF-8 text"),
    "not-utf8": ("latin.jsonl", "is not UTF-8 text"),
}


@pytest.mark.parametrize("kind", list(DATASET_FILES), ids=list(DATASET_FILES))
def test_hostile_dataset_files_are_refused(scripted: type[ScriptedServer], tmp_path: Path, kind: str) -> None:
    server = scripted(script_responder({"default": [kf_output("1", "s")]})).start()
    name, message = DATASET_FILES[kind]
    path = Path(name) if name.startswith("/") else tmp_path / name
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "link":
        path.symlink_to("/dev/zero")
    elif kind == "surrogate":  # valid JSON whose string holds a lone surrogate: no database can store it
        path.write_text('{"problem": "What is \\ud800 2+2?", "answer": "4"}\n')
    elif kind == "not-utf8":
        path.write_bytes('{"problem": "caf\xe9 2+2?", "answer": "4"}\n'.encode("latin-1"))
    before = files_in(tmp_path)
    proc = run_kflow(eval_cmd(server.base_url, path, tmp_path / "e.db", tmp_path / "out", "bad", 1), timeout=120)
    assert proc.returncode == 2
    assert message in one_line_error(proc)
    assert files_in(tmp_path) == before and server.requests == []
    assert json.loads(proc.stdout)["status"] == "error"  # --json: one object, also for bad input


@pytest.mark.parametrize(
    "problem", [b"What is \xff\xfe 1+1?", b"x" * ((4 << 20) + 1)], ids=["invalid-utf8", "larger-than-4-MiB"]
)
def test_a_problem_on_standard_input_is_checked_before_anything_is_written(tmp_path: Path, problem: bytes) -> None:
    db = tmp_path / "stdin.db"
    args = ["solve", "-", "--base-url", "http://127.0.0.1:9/v1", "--db", str(db), "--model", "m"]
    proc = subprocess.run(
        [sys.executable, "-m", "knowledge_flow", *args],
        input=problem,
        capture_output=True,
        env=kflow_env({"LC_ALL": "C", "LANG": "C"}),  # a C locale: Python would decode with surrogateescape
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2
    line = one_line_error(proc)
    assert "the problem" in line and ("not UTF-8" in line or "larger than 4 MiB" in line)
    assert files_in(tmp_path) == []  # no database, no checkpoint


# --- templates --------------------------------------------------------------------------------------------


TEMPLATES = {
    "power": ("{{ 10 ** (10 ** 8) }}", "a power of"),
    "repetition": ("{{ 'x' * 10**8 }}", "a repetition of 100,000,000 characters"),
    "range": ("{{ range(10**9) | list }}", "an argument of 1,000,000,000"),
    "recursive macro": ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "calls nest more than 100 deep"),
    "time": (
        "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
        "took more than 5 s",
    ),
}


@pytest.mark.parametrize("case", list(TEMPLATES), ids=list(TEMPLATES))
def test_template_bombs_are_refused_before_anything_is_written(
    scripted: type[ScriptedServer], tmp_path: Path, case: str
) -> None:
    from knowledge_flow.prompts import load_prompt_set

    expression, message = TEMPLATES[case]
    source = load_prompt_set(PAPER_SET).source
    assert TEMPLATE_START in source
    path = tmp_path / "bomb.toml"
    path.write_text(source.replace(TEMPLATE_START, "first = '''\n" + expression + "{{ problem }}", 1))
    server = scripted(script_responder({"default": [kf_output("1", "s")]})).start()
    before = files_in(tmp_path)
    proc = run_kflow(solve_args(server.base_url, tmp_path / "t.db", "--prompts", str(path), "--json"), timeout=300)
    assert proc.returncode == 2
    line = one_line_error(proc)
    assert message in line and "'first' in the top level" in line
    assert files_in(tmp_path) == before and server.requests == []
    assert json.loads(proc.stdout) == {"status": "error", "reason": line.removeprefix("error: "), "exit_code": 2}


def test_a_template_that_fails_on_the_model_text_fails_the_run_cleanly(
    scripted: type[ScriptedServer], tmp_path: Path
) -> None:
    """The rehearsal passes (a sample reference is short), but the model's reference makes the later prompt
    pass the output bound: those rollouts are stored as failed with the reason, nothing is sent for them,
    the run ends as failed (exit 1) and says how to resume."""
    from knowledge_flow.prompts import load_prompt_set

    source = load_prompt_set(PAPER_SET).source
    path = tmp_path / "echo.toml"
    path.write_text(source.replace("later = '''\n", "later = '''\n{{ reference * 200 }}\n", 1))
    long_summary = "word " * 2000  # 10,000 characters: 200 copies pass 1,000,000
    server = scripted(script_responder({"default": [kf_output("5", long_summary)]})).start()
    db = tmp_path / "r.db"
    proc = run_kflow(solve_args(server.base_url, db, "--prompts", str(path), "--iterations", "4", "--thread-id", "e"))
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    text = " ".join(proc.stderr.split())
    assert "the prompt could not be rendered" in text and "'later' in the top level: a repetition of" in text
    assert "kflow resume e" in text
    assert len(server.requests) == 1  # only rollout 0 was sent
    with sqlite3.connect(db) as conn:
        failed = conn.execute("SELECT iteration, error FROM kf_rollouts WHERE error IS NOT NULL").fetchall()
        status = conn.execute("SELECT status FROM kf_runs").fetchone()[0]
    assert [i for i, _ in failed] == [1, 2, 3] and status == "failed"


# --- databases --------------------------------------------------------------------------------------------


def fold_wal(db: Path) -> None:
    """Fold the write-ahead log into the file and close: its bytes are then the whole database."""
    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def finished_run(server: ScriptedServer, db: Path, thread: str = "t1", iterations: int = 3) -> None:
    args = ["--thread-id", thread, "--model", "m", "--prompts", PAPER_SET]
    proc = run_kflow(
        ["solve", PROBLEM, "--base-url", server.base_url, "--iterations", str(iterations), "--db", str(db), *args]
    )
    assert proc.returncode == 0, proc.stderr
    fold_wal(db)


def long_replies() -> Callable[[Request], Reply]:
    """Replies long enough to be stored compressed (as real model outputs are)."""

    def respond(request: Request) -> Reply:
        k = request.index
        return Reply(content=kf_output(str(5 + k % 2), f"S{k}: " + "a careful count of the divisors " * 20))

    return respond


def damage_truncate(db: Path) -> None:
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])


def damage_schema(db: Path) -> None:
    data = bytearray(db.read_bytes())
    at = data.find(b"CREATE TABLE kf_runs")
    data[at : at + 6] = b"CRE@TE"
    db.write_bytes(bytes(data))


def another_program(db: Path, *statements: str) -> None:
    """Replace the file with another program's SQLite database."""
    db.unlink()
    conn = sqlite3.connect(db)
    try:
        for statement in statements:
            conn.execute(statement)
        conn.commit()
    finally:
        conn.close()


def damage_foreign_meta(db: Path) -> None:
    another_program(db, "CREATE TABLE kf_meta (a, b, c)")


def damage_meta_value(db: Path) -> None:
    another_program(
        db, "CREATE TABLE kf_meta (key TEXT, value TEXT)", "INSERT INTO kf_meta VALUES ('schema_version', 'banana')"
    )


REFUSED = {
    "truncated": (damage_truncate, "is damaged: it holds"),
    "bit-flipped schema": (damage_schema, "is damaged (malformed database schema"),
    "foreign kf_meta": (damage_foreign_meta, "its kf_meta table has columns a, b, c"),
    "foreign schema version": (damage_meta_value, "no knowledge-flow schema version"),
}


@pytest.mark.parametrize("case", list(REFUSED), ids=list(REFUSED))
def test_a_damaged_or_foreign_database_is_refused_untouched(
    scripted: type[ScriptedServer], tmp_path: Path, case: str
) -> None:
    damage, message = REFUSED[case]
    server = scripted(long_replies()).start()
    db = tmp_path / "d.db"
    finished_run(server, db)
    damage(db)
    before, sent = db.read_bytes(), len(server.requests)
    for args in (
        ["show", "t1", "--db", str(db)],
        ["threads", "--db", str(db), "--json"],
        ["resume", "t1", "--db", str(db), "--iterations", "5"],
        solve_args(server.base_url, db),
    ):
        proc = run_kflow(args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in one_line_error(proc), args
    assert db.read_bytes() == before and files_in(tmp_path) == ["d.db"] and len(server.requests) == sent


def test_a_corrupted_compressed_value_is_reported_as_damage(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    server = scripted(long_replies()).start()
    db = tmp_path / "z.db"
    finished_run(server, db)
    with sqlite3.connect(db) as conn:
        blob = conn.execute("SELECT content FROM kf_rollouts WHERE iteration = 1").fetchone()[0]
        assert isinstance(blob, bytes) and zlib.decompress(blob)  # stored compressed
        broken = blob[:20] + bytes([blob[20] ^ 0x55]) + blob[21:]
        conn.execute("UPDATE kf_rollouts SET content = ? WHERE iteration = 1", (broken,))
    conn.close()
    proc = run_kflow(["show", "t1", "--db", str(db), "--texts", "--json"])
    assert proc.returncode == 1
    assert "is damaged: thread t1" in one_line_error(proc) and "iteration 1 were altered" in proc.stderr
    assert json.loads(proc.stdout)["status"] == "damaged"
    with sqlite3.connect(db) as conn:  # a row written before seals existed: the broken stream itself is found
        conn.execute("UPDATE kf_rollouts SET seal = NULL")
    conn.close()
    legacy = run_kflow(["show", "t1", "--db", str(db), "--texts"])
    assert legacy.returncode == 1
    assert "is damaged: a compressed value cannot be read" in one_line_error(legacy)


def without_dac_override() -> list[str]:
    """A prefix that runs a command without the right to override file permissions (root has it)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: file permissions cannot be enforced")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]


def test_a_read_only_database_is_refused_before_anything_is_written(
    scripted: type[ScriptedServer], tmp_path: Path
) -> None:
    server = scripted(long_replies()).start()
    db = tmp_path / "ro.db"
    finished_run(server, db)
    sent = len(server.requests)
    db.chmod(0o444)
    before = db.read_bytes()
    prefix = without_dac_override()
    for args in (
        ["resume", "t1", "--db", str(db), "--iterations", "5", "--base-url", server.base_url, "--json"],
        solve_args(server.base_url, db, "--json"),
    ):
        proc = subprocess.run(
            [*prefix, sys.executable, "-m", "knowledge_flow", *args],
            capture_output=True,
            text=True,
            env=kflow_env(),
            cwd=REPO,
            timeout=300,
        )
        assert proc.returncode == 2, proc.stderr
        line = one_line_error(proc)
        assert "cannot be written (attempt to write a readonly database)" in line
        assert json.loads(proc.stdout)["status"] == "error"
    assert db.read_bytes() == before and len(server.requests) == sent
    db.chmod(0o644)


def limited_file_size(limit: int) -> Callable[[], None]:
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_stops_the_run_with_one_line_and_resume_finishes(
    scripted: type[ScriptedServer], tmp_path: Path
) -> None:
    server = scripted(long_replies()).start()
    db = tmp_path / "full.db"
    args = solve_args(server.base_url, db, "--iterations", "30", "--thread-id", "full", "--json")
    proc = subprocess.run(
        [sys.executable, "-m", "knowledge_flow", *args],
        capture_output=True,
        text=True,
        env=kflow_env(),
        cwd=REPO,
        timeout=300,
        preexec_fn=limited_file_size(600_000),  # for the child only: the write-ahead log fills it mid-run
    )
    assert proc.returncode == 1, proc.stderr
    line = one_line_error(proc, after_progress=True)
    assert "could not be written" in line and "kflow resume full" in line
    payload = json.loads(proc.stdout)
    assert payload["status"] == "failed" and payload["thread_id"] == "full" and payload["reason"] in line
    resumed = run_kflow(["resume", "full", "--db", str(db), "--json"])
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads(resumed.stdout)
    assert result["status"] == "done" and len(result["answers"]) == 30
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT count(*) FROM kf_rollouts").fetchone()[0] == 30


# --- a damaged evaluation ---------------------------------------------------------------------------------


def test_deleted_rollouts_are_reported_as_damage_not_graded_by_position(
    scripted: type[ScriptedServer], tmp_path: Path
) -> None:
    """With one problem's first rollouts deleted, `report --answer-rule` used to grade the remaining rows under
    the wrong iterations; now the report names the problem and iterations and computes nothing."""
    dataset, order, _ = dataset_of(tmp_path, 3)
    server = scripted(eval_responder(changing_answer(order)), keys=order).start()
    db = tmp_path / "e.db"
    ran = run_kflow(eval_cmd(server.base_url, dataset, db, tmp_path / "out", "dmg", 3))
    assert ran.returncode == 0, ran.stderr
    for rule in ("default", "last-boxed"):
        report = run_kflow(["report", "dmg", "--db", str(db), "--out", str(tmp_path / "rep"), "--answer-rule", rule])
        assert report.returncode == 0, report.stderr
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM kf_rollouts WHERE thread_id = 'dmg:1' AND iteration = 0")
    conn.close()
    for rule in ("default", "last-boxed"):
        args = ["report", "dmg", "--db", str(db), "--out", str(tmp_path / "rep"), "--answer-rule", rule, "--json"]
        report = run_kflow(args)
        assert report.returncode == 1
        line = one_line_error(report)
        assert "is damaged: evaluation dmg: problem 1" in line and "iteration 0 are missing" in line
        assert json.loads(report.stdout)["status"] == "damaged"
    shown = run_kflow(["show", "dmg:1", "--db", str(db)])
    assert shown.returncode == 1 and "the rollouts of iteration 0 are missing" in one_line_error(shown)
    assert shown.stdout == ""  # no table marked done
    assert run_kflow(["show", "dmg:0", "--db", str(db)]).returncode == 0  # the other problems are intact
