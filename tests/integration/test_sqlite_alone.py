"""SQLite needs nothing of the ``postgres`` extra: with psycopg and LangGraph's Postgres saver impossible to
import, a run is solved, shown and resumed on an SQLite file, and a ``postgresql://`` database is refused in
one line that names the extra."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.conftest import REPO, kflow_env
from tests.support.scripted_server import Reply, ScriptedServer, kf_output

#: The modules of the ``postgres`` extra; None in `sys.modules` makes importing them fail.
BLOCKED = ("psycopg", "psycopg_pool", "psycopg_binary", "langgraph.checkpoint.postgres")
RUN = (
    "import runpy, sys\n"
    f"for name in {BLOCKED!r}:\n"
    "    sys.modules[name] = None\n"
    "sys.argv = ['kflow', *sys.argv[1:]]\n"
    "runpy.run_module('knowledge_flow', run_name='__main__')\n"
)


def kflow_without_postgres(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", RUN, *args], capture_output=True, text=True, env=kflow_env(None), timeout=300, cwd=REPO
    )


def test_sqlite_runs_without_the_postgres_extra(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    server = scripted(lambda r: Reply(content=kf_output("9", f"S{r.index}"))).start()
    db = str(tmp_path / "alone.db")
    common = ["--db", db, "--json"]
    problem = "How many divisors does 36 have?"
    first = ["solve", problem, "--base-url", server.base_url, "--iterations", "2", "--thread-id", "t"]
    solved = kflow_without_postgres([*first, "--model", "m", "--prompts", "kf-instruct-paper", *common])
    assert solved.returncode == 0, solved.stderr
    assert json.loads(solved.stdout)["answers"] == ["9", "9"]
    resumed = kflow_without_postgres(["resume", "t", "--iterations", "3", "--base-url", server.base_url, *common])
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["iterations_done"] == 3
    assert len(server.requests) == 3  # no stored rollout requested again
    shown = kflow_without_postgres(["show", "t", *common])
    assert shown.returncode == 0, shown.stderr
    refused = kflow_without_postgres(["threads", "--db", "postgresql://kflow@127.0.0.1:9/kflow"])
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "error: a postgresql:// database needs the postgres extra: pip install 'knowledge-flow[postgres]'"
    ]
