"""A real PostgreSQL server for the tests: one cluster in a temporary folder, one database per test.

The server refuses to run as root: as root, the cluster belongs to an unprivileged user (``postgres`` when the
Debian package created it, else one made here) and its commands run through ``runuser``. It listens on
127.0.0.1 only, on a free port, and asks for a password (scram-sha-256): the tests' URLs carry one, so the
tests can check it is never stored, logged or shown.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

#: The user the cluster's superuser is called (not the operating-system user that runs the server).
SUPERUSER = "kflow"


def find_bindir() -> Path | None:
    """The folder of PostgreSQL's server programs (initdb, pg_ctl), or None when it is not installed."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True)
    for folder in candidates:
        if (Path(folder) / "initdb").is_file():
            return Path(folder)
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _server_user() -> str | None:
    """The unprivileged user that runs the server when the tests run as root (None: the current user)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "kflow-pg"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "kflow-pg"], check=True)
    return "kflow-pg"


class PostgresCluster:
    """initdb, pg_ctl start; `create_database` gives a fresh database's URL; `stop` removes everything.

    `durable`: PostgreSQL's default settings (every commit flushed to disk), for benchmarks; the tests turn
    flushing off."""

    def __init__(self, bindir: Path, *, durable: bool = False) -> None:
        self.bindir = bindir
        self.durable = durable
        self.user = _server_user()
        self.password = "pw-" + secrets.token_hex(8)
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="kflow-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._counter = 0

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)

    def start(self) -> PostgresCluster:
        password_file = self.root / "password"
        password_file.write_text(self.password + "\n")
        if self.user is not None:
            record = pwd.getpwnam(self.user)
            for path in (self.root, password_file):
                os.chown(path, record.pw_uid, record.pw_gid)
        self.root.chmod(0o700)
        init = self._run(
            "initdb", "-D", str(self.data), "-U", SUPERUSER, f"--pwfile={password_file}", "--auth=scram-sha-256",
            "--encoding=UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {init.stderr or init.stdout}")
        options = f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.root} "
        options += "-c max_connections=200"
        if not self.durable:  # tests: commits need not survive a power cut
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        started = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")
        if started.returncode != 0:
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {started.stderr or started.stdout}\n{log[-2000:]}")
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def execute(self, sql: str, database: str = "postgres") -> None:
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as conn:
            conn.execute(sql)

    def create_database(self, prefix: str = "t") -> str:
        """A new, empty database; its URL (with the password)."""
        self._counter += 1
        name = f"{prefix}_{os.getpid()}_{self._counter}"
        self.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")
        shutil.rmtree(self.root, ignore_errors=True)
