"""The embedded CPU model server: llama-cpp-python's OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path

from knowledge_flow.context import DEFAULT_LOCAL_PORT
from knowledge_flow.params import LOCAL_MODEL_ALIAS
from knowledge_flow.server_launch.model_files import INSTALL_HINT, cache_dir, ensure_model
from knowledge_flow.server_launch.process import ServerError, ServerProcess, read_pid_file, start_server

DEFAULT_N_CTX = 4096


def local_base_url(host: str = "127.0.0.1", port: int = DEFAULT_LOCAL_PORT) -> str:
    return f"http://{host}:{port}/v1"


def pid_file(port: int = DEFAULT_LOCAL_PORT) -> Path:
    return servers_dir() / f"local-{port}.json"


def servers_dir() -> Path:
    """Pid files of the servers `kflow serve` started, one per port."""
    return cache_dir() / "servers"


def command(model_path: Path, host: str, port: int, n_ctx: int, alias: str) -> list[str]:
    threads = str(max(1, os.cpu_count() or 1))
    return [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model_path),
        "--model_alias",
        alias,
        "--host",
        host,
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        "--n_threads",
        threads,
        "--n_threads_batch",
        threads,
    ]


def start_local(
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_LOCAL_PORT,
    model_path: Path | None = None,
    n_ctx: int = DEFAULT_N_CTX,
    alias: str = LOCAL_MODEL_ALIAS,
    write_pid_file: bool = True,
    progress: Callable[[str], None] | None = None,
) -> ServerProcess:
    """Assemble the packaged model if needed and start the server; returns once it answers."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise ServerError(f"the embedded CPU server needs the local extra: {INSTALL_HINT}")
    path = model_path or ensure_model(progress=progress)
    if not path.is_file():
        raise ServerError(f"model file {path} does not exist")
    say = progress or (lambda _message: None)
    base_url = local_base_url(host, port)
    log_path = servers_dir() / f"local-{port}.log"
    say(f"starting the local model server on {base_url} (log: {log_path})")
    return start_server(
        command(path, host, port, n_ctx, alias),
        base_url=base_url,
        host=host,
        port=port,
        log_path=log_path,
        pid_path=pid_file(port) if write_pid_file else None,
    )


def stop_servers(port: int | None = None) -> list[ServerProcess]:
    """Stop the servers `kflow serve` started (those on `port` only, when given); returns those that ran."""
    stopped = []
    folder = servers_dir()
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        server = read_pid_file(path)
        if server is None:
            path.unlink(missing_ok=True)
            continue
        if port is not None and not server.base_url.rstrip("/").endswith(f":{port}/v1"):
            continue
        running = server.alive()
        server.stop()
        if running:
            stopped.append(server)
    return stopped
