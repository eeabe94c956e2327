"""The graph over real HTTP against the scripted OpenAI-compatible server."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from langgraph.types import Overwrite

from knowledge_flow import Context, compile_graph
from knowledge_flow.persistence import SqliteCheckpointer, get_checkpointer, get_store
from tests.conftest import REPO, kflow_env
from tests.integration.scripts import ANSWERS, EXPECTED_PROMPTS, PAPER_SET, PROBLEM, RECORD, SCRIPT
from tests.support.databases import Database
from tests.support.scripted_server import Reply, Request, ScriptedServer, script_responder
from tests.support.stored import checkpoint_payloads, checkpoints_and_writes


def run(server: ScriptedServer, db: Path, thread: str, **inputs: Any) -> dict[str, Any]:
    checkpointer = SqliteCheckpointer(db)
    try:
        graph = compile_graph(checkpointer)
        result = graph.invoke(
            {"problem": PROBLEM, "model": "scripted-model", "prompts": PAPER_SET, **inputs},
            {"configurable": {"thread_id": thread}},
            context=Context(base_url=server.base_url, db_path=str(db), max_retries=0),
        )
        return dict(result)
    finally:
        checkpointer.close()


def test_exact_prompts_knowledge_and_answers(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    server = scripted(script_responder({"default": SCRIPT})).start()
    db = tmp_path / "kf.db"
    result = run(server, db, "t1", iterations=8, temperature=0.7, top_p=0.95, max_new_tokens=321)

    assert [r.prompt for r in server.requests] == EXPECTED_PROMPTS
    for request in server.requests:
        assert request.messages == [{"role": "user", "content": request.prompt}]
        assert request.body["model"] == "scripted-model"
        assert request.body["temperature"] == 0.7
        assert request.body["top_p"] == 0.95
        assert request.body["max_tokens"] == 321
    assert result["answers"] == ANSWERS
    assert result["final_answer"] == "7"
    assert result["status"] == "done"
    assert result["knowledge"] == RECORD
    assert result["iteration"] == 8

    store = get_store(db)
    run_row = store.latest_run("t1")
    assert run_row is not None and run_row.status == "done" and run_row.final_answer == "7"
    rows = store.rollouts(run_row.run_id)
    assert [r.answer for r in rows] == ANSWERS
    assert [r.content for r in rows] == SCRIPT
    assert [r.changed for r in rows] == [None, True, False, True, True, True, True, False]
    assert [json.loads(r.knowledge_added)["iteration"] if r.knowledge_added else None for r in rows] == [
        None,
        1,
        None,
        3,
        4,
        5,
        6,
        None,
    ]
    assert all(r.completion_tokens > 0 and r.prompt_tokens > 0 for r in rows)
    assert sum(r.prompt_tokens for r in rows) == result["usage"]["prompt_tokens"]

    # Storage grows linearly: the append-only lists are never copied into checkpoints (prepare's reset leaves
    # an empty snapshot), and each knowledge item and answer is written once.
    checkpoints, writes = checkpoints_and_writes(db)
    assert len(checkpoints) >= 4 * 8  # one per step: solve, extract, distill, stop-check
    for channel in ("knowledge", "answers", "changed_with_report"):
        stored = [checkpoint["channel_values"].get(channel) for checkpoint in checkpoints]
        assert all(value is None or getattr(value, "value", value) == [] for value in stored)
    written = [value for channel, value in writes if channel == "knowledge"]
    assert not any(isinstance(batch, Overwrite) for batch in written)  # a new thread's lists need no reset
    assert [item for batch in written for item in batch] == RECORD
    answers = [batch for channel, batch in writes if channel == "answers" and isinstance(batch, list)]
    assert [answer for batch in answers for answer in batch] == ANSWERS
    # The run parameters given as input are read once and do not stay in the state.
    assert checkpoints[1]["channel_values"]["temperature"] == 0.7  # the input, before `prepare`
    assert all("temperature" not in checkpoint["channel_values"] for checkpoint in checkpoints[2:])


def in_memory(_db: Path) -> Any:
    from langgraph.checkpoint.memory import InMemorySaver

    return InMemorySaver()


def stock_sqlite(db: Path) -> Any:
    from langgraph.checkpoint.sqlite import SqliteSaver

    return SqliteSaver(sqlite3.connect(db.with_suffix(".checkpoints.db"), check_same_thread=False))


def ours_on_postgres(db: str) -> Any:
    return get_checkpointer(db)


def stock_postgres(db: str) -> Any:
    from langgraph.checkpoint.postgres import PostgresSaver
    from psycopg import Connection
    from psycopg.rows import dict_row

    saver = PostgresSaver(Connection.connect(db, autocommit=True, prepare_threshold=0, row_factory=dict_row))
    saver.setup()
    return saver


@pytest.mark.parametrize(
    ("saver", "store"),
    [
        (SqliteCheckpointer, "sqlite"),
        (in_memory, "sqlite"),
        (stock_sqlite, "sqlite"),
        (ours_on_postgres, "postgres"),
        (stock_postgres, "postgres"),
        (in_memory, "postgres"),
    ],
    ids=["ours", "memory", "sqlite", "ours-postgres", "postgres", "memory-postgres-store"],
)
def test_exact_prompts_with_any_checkpointer(
    scripted: type[ScriptedServer], tmp_path: Path, request: pytest.FixtureRequest, saver: Any, store: str
) -> None:
    """The documentation promises that any LangGraph checkpointer works: the same run, byte for byte, over each, with
    the rollout store in an SQLite file or a PostgreSQL database."""
    server = scripted(script_responder({"default": SCRIPT})).start()
    db = str(tmp_path / "kf.db") if store == "sqlite" else request.getfixturevalue("postgres").target
    checkpointer = saver(Path(db) if store == "sqlite" else db)
    graph = compile_graph(checkpointer)
    config: Any = {"configurable": {"thread_id": "any"}}
    context = Context(base_url=server.base_url, db_path=db, max_retries=0)
    result = graph.invoke(
        {"problem": PROBLEM, "model": "scripted-model", "iterations": 8, "prompts": PAPER_SET}, config, context=context
    )
    assert [r.prompt for r in server.requests] == EXPECTED_PROMPTS
    assert result["answers"] == ANSWERS and result["knowledge"] == RECORD and result["final_answer"] == "7"
    again = graph.invoke(None, config, context=context)  # a finished thread: nothing more is sent
    assert again["answers"] == ANSWERS and len(server.requests) == 8


def test_state_holds_no_full_texts(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    marker = "UNIQUE-TRACE-MARKER " * 200
    outputs = [f"<think>{marker}</think>" + text for text in SCRIPT[:3]]
    server = scripted(script_responder({"default": outputs})).start()
    db = tmp_path / "kf.db"
    run(server, db, "t1", iterations=3)
    payloads = checkpoint_payloads(db)
    assert any(PROBLEM.encode() in payload for payload in payloads)  # the payloads are readable
    assert not any(b"UNIQUE-TRACE-MARKER" in payload for payload in payloads)
    stored = get_store(db).rollouts(get_store(db).list_runs()[0].run_id)
    assert len(stored) == 3 and all("UNIQUE-TRACE-MARKER" in row.content for row in stored)
    with sqlite3.connect(db) as conn:  # the long texts are stored compressed
        assert all(isinstance(row[0], bytes) for row in conn.execute("SELECT content FROM kf_rollouts"))


def test_reasoning_field_is_kept(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    def respond(request: Request) -> Reply:
        return Reply(content=SCRIPT[0], reasoning="thinking about divisors", reasoning_key="reasoning")

    server = scripted(respond).start()
    db = tmp_path / "kf.db"
    result = run(server, db, "t1", iterations=1)
    store = get_store(db)
    rows = store.rollouts(result["run_id"])
    assert rows[0].reasoning == "thinking about divisors"
    assert rows[0].answer == "5"


def test_failed_request_then_resume_with_invoke_none(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    failed = threading.Event()
    base = script_responder({"default": SCRIPT})

    def respond(request: Request) -> Reply:
        if request.index == 3 and not failed.is_set():
            failed.set()
            return Reply(content="", status=503)  # the endpoint fails (no retries in this test)
        return base(request)

    server = scripted(respond).start()
    db = tmp_path / "kf.db"
    checkpointer = SqliteCheckpointer(db)
    graph = compile_graph(checkpointer)
    config: Any = {"configurable": {"thread_id": "t1"}}
    context = Context(base_url=server.base_url, db_path=str(db), max_retries=0)
    with pytest.raises(Exception, match=r"503|scripted failure"):
        graph.invoke({"problem": PROBLEM, "iterations": 8, "prompts": PAPER_SET}, config, context=context)
    assert graph.get_state(config).values["iteration"] == 3
    result = graph.invoke(None, config, context=context)
    checkpointer.close()
    assert result["answers"] == ANSWERS
    assert [r.prompt for r in server.delivered()] == EXPECTED_PROMPTS
    assert len(server.requests) == 9  # 8 delivered + the one that failed


def test_new_run_on_same_thread_starts_fresh(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    server = scripted(script_responder({"default": SCRIPT})).start()
    db = tmp_path / "kf.db"
    run(server, db, "t1", iterations=3, temperature=0.1)
    second = run(server, db, "t1", iterations=2)
    assert len(second["answers"]) == 2
    assert server.requests[-1].body["temperature"] == 0.6  # the earlier run's temperature is not inherited
    assert len(get_store(db).list_runs()) == 2


def test_exported_graph_with_env_and_resume(scripted: type[ScriptedServer], database: Database) -> None:
    """`from knowledge_flow import graph` works with the checkpointer of KFLOW_DB (an SQLite file or a
    PostgreSQL database); invoke(None) continues."""
    server = scripted(script_responder({"default": SCRIPT})).start()
    db = database.target
    code = (
        "import json, sys\n"
        "from knowledge_flow import graph\n"
        "cfg = {'configurable': {'thread_id': 'py-1'}}\n"
        f"out = graph.invoke({{'problem': {PROBLEM!r}, 'iterations': 3}}, cfg)\n"
        "again = graph.invoke(None, cfg)\n"
        "print(json.dumps({'answers': out['answers'], 'status': out['status'], 'again': again['answers']}))\n"
    )
    env = kflow_env({"KFLOW_DB": str(db), "KFLOW_BASE_URL": server.base_url, "KFLOW_MODEL": "m"})
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout.strip().splitlines()[-1])
    assert payload == {"answers": ANSWERS[:3], "status": "done", "again": ANSWERS[:3]}
    assert database.rows("SELECT count(*) FROM kf_rollouts") == [(3,)]
    assert database.rows("SELECT count(*) FROM checkpoints")[0][0] > 0
    assert len(server.requests) == 3
