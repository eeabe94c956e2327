from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from tests.support.databases import Database
from tests.support.postgres import PostgresCluster, find_bindir
from tests.support.scripted_server import ScriptedServer, script_responder

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"


def shared_dataset(name: str) -> Path:
    """A dataset of `SHARED_DATASETS` (``../shared/datasets`` beside the checkout, as the README's layout has
    it); a test that needs one fails with where it looked rather than a FileNotFoundError deep inside."""
    path = SHARED_DATASETS / name
    if not path.is_file():
        reason = f"{path} not found: the tests read the datasets from ../shared/datasets beside the checkout"
        pytest.fail(reason, pytrace=False)
    return path


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


_KFLOW_ENV = ("KFLOW_BASE_URL", "KFLOW_MODEL", "KFLOW_DB", "KFLOW_API_KEY", "OPENAI_API_KEY", "KFLOW_HEARTBEAT_TIMEOUT")
#: The stores the persistence tests run over, as LangGraph's own tests run over a list of checkpointers.
STORES = ["sqlite", "postgres"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _KFLOW_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LANGSMITH_TRACING", "false")
    monkeypatch.setenv("LANGGRAPH_CLI_NO_ANALYTICS", "1")


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One real PostgreSQL server for the session (each test gets its own database: `database`)."""
    required = os.environ.get("KFLOW_REQUIRE_POSTGRES") == "1"
    bindir = find_bindir()
    reason = ""
    if bindir is None:
        reason = "PostgreSQL's server programs (initdb, pg_ctl) are not installed (Debian: apt-get install postgresql)"
    else:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            reason = "psycopg is not installed (pip install -e '.[dev]' brings the postgres extra)"
    if reason:
        if required:
            pytest.fail(f"KFLOW_REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    assert bindir is not None
    cluster = PostgresCluster(bindir).start()
    yield cluster
    cluster.stop()


@pytest.fixture(params=STORES)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    """A new, empty database of each store: an SQLite file in the test's folder, a PostgreSQL database."""
    if request.param == "sqlite":
        return Database("sqlite", str(tmp_path / "kf.db"))
    cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
    return Database("postgres", cluster.create_database())


@pytest.fixture
def postgres(postgres_cluster: PostgresCluster) -> Database:
    """A new, empty PostgreSQL database."""
    return Database("postgres", postgres_cluster.create_database())


@pytest.fixture
def scripted() -> Iterator[type[ScriptedServer]]:
    """Start scripted servers; every one started through this fixture is stopped after the test."""
    started: list[ScriptedServer] = []

    class Factory(ScriptedServer):
        def start(self) -> ScriptedServer:
            started.append(self)
            return super().start()

    yield Factory
    for server in started:
        server.stop()


def scripted_server(factory: type[ScriptedServer], scripts: Mapping[str, Sequence[str]]) -> ScriptedServer:
    return factory(script_responder(scripts), keys=[k for k in scripts if k != "default"]).start()


def kflow_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _KFLOW_ENV}
    env.update({"PYTHONUNBUFFERED": "1", **(extra or {})})
    return env


def start_kflow(
    args: Sequence[str],
    *,
    output: int = subprocess.PIPE,
    new_session: bool = False,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[str]:
    """`kflow ARGS` in the background (to kill it, or to run several at once)."""
    return subprocess.Popen(
        [sys.executable, "-m", "knowledge_flow", *args],
        env=kflow_env(env),
        cwd=REPO,
        stdout=output,
        stderr=output,
        text=True,
        start_new_session=new_session,
    )


def run_kflow(
    args: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 300, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "knowledge_flow", *args],
        capture_output=True,
        text=True,
        env=kflow_env(env),
        timeout=timeout,
        input=stdin,
        cwd=REPO,
    )
