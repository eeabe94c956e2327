"""Start a model server as a subprocess: log file, pid file, health wait, stop by pid."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


class ServerError(RuntimeError):
    """A server did not start, or cannot be reached."""


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def models_ready(base_url: str, timeout: float = 2.0) -> bool:
    """Whether ``{base_url}/models`` answers with a model list."""
    try:
        with urllib.request.urlopen(f"{base_url.rstrip('/')}/models", timeout=timeout) as response:
            body = json.loads(response.read() or b"{}")
            return response.status == 200 and isinstance(body.get("data"), list)
    except (OSError, ValueError, urllib.error.URLError):
        return False


def served_models(base_url: str, timeout: float = 5.0) -> list[str]:
    """The model ids ``{base_url}/models`` lists (empty when it does not answer)."""
    try:
        with urllib.request.urlopen(f"{base_url.rstrip('/')}/models", timeout=timeout) as response:
            data = json.loads(response.read() or b"{}").get("data")
    except (OSError, ValueError, AttributeError, urllib.error.URLError):
        return []
    if not isinstance(data, list):
        return []
    return [str(entry["id"]) for entry in data if isinstance(entry, dict) and entry.get("id")]


def served_model(base_url: str, timeout: float = 5.0) -> str | None:
    """The model a single-model server reports, or None (no answer, or several models)."""
    models = served_models(base_url, timeout)
    return models[0] if len(models) == 1 else None


def health_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except (OSError, ValueError, urllib.error.URLError):
        return False


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class ServerProcess:
    """A server this process started (or found through its pid file)."""

    pid: int
    base_url: str
    log_path: Path
    pid_path: Path | None = None
    popen: subprocess.Popen[bytes] | None = None
    model: str | None = None
    """The model name the server reports (``/v1/models``), when known."""

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        try:
            os.kill(self.pid, 0)
        except OSError:
            return False
        return True

    def stop(self, grace_s: float = 10.0) -> None:
        if self.alive():
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except OSError:
                os.kill(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.1)
            if self.alive():
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except OSError:
                    os.kill(self.pid, signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait(timeout=5)
        if self.pid_path is not None:
            self.pid_path.unlink(missing_ok=True)


def start_server(
    command: Sequence[str],
    *,
    base_url: str,
    host: str,
    port: int,
    log_path: Path,
    pid_path: Path | None = None,
    env: Mapping[str, str] | None = None,
    ready_timeout_s: float = 180.0,
    health_url: str | None = None,
    model: str | None = None,
) -> ServerProcess:
    """Start `command`, wait until `health_url` (if any) answers 200 and `base_url` lists models; on failure
    stop it and raise with the log tail. The server runs in its own process group, so it outlives us."""
    if port_in_use(host, port):
        raise ServerError(f"port {port} on {host} is already in use; choose another with --port")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        popen = subprocess.Popen(
            list(command),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    server = ServerProcess(popen.pid, base_url, log_path, pid_path, popen, model)
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if not server.alive():
            raise ServerError(
                f"the server exited with code {popen.returncode} during start-up. "
                f"Last lines of {log_path}:\n{log_tail(log_path)}"
            )
        if (health_url is None or health_ok(health_url)) and models_ready(base_url):
            server.model = served_model(base_url) or model
            if pid_path is not None:
                pid_path.parent.mkdir(parents=True, exist_ok=True)
                record = {
                    "pid": popen.pid,
                    "base_url": base_url,
                    "log": str(log_path),
                    "program": command[0],
                    "model": server.model,
                }
                pid_path.write_text(json.dumps(record))
            return server
        time.sleep(0.5)
    server.stop()
    raise ServerError(
        f"the server did not become ready ({base_url}/models) within {ready_timeout_s:.0f}s. "
        f"Last lines of {log_path}:\n{log_tail(log_path)}"
    )


def _runs(pid: int, program: str) -> bool:
    """Whether process `pid` still runs `program` (a recycled pid must never be signalled)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    name = Path(program).name.encode()
    return any(
        Path(part.decode(errors="replace")).name.encode() == name or part == program.encode() for part in cmdline
    )


def read_pid_file(pid_path: Path) -> ServerProcess | None:
    """The server a pid file records, or None when the file is unreadable or its process is gone."""
    try:
        data = json.loads(pid_path.read_text())
        model = data.get("model")
        server = ServerProcess(
            int(data["pid"]), str(data["base_url"]), Path(data["log"]), pid_path, None, str(model) if model else None
        )
        program = str(data.get("program") or "")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if program and not _runs(server.pid, program):
        pid_path.unlink(missing_ok=True)
        return None
    return server
