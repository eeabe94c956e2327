"""The embedded CPU model server: llama-cpp-python's OpenAI-compatible server on 127.0.0.1.

It serves one packaged model (`model_files.PACKAGED_MODELS`, assembled and verified on first use) or any
GGUF file (`model_path`), under that model's own name: the packaged model's served name, or the file's
``general.name`` metadata (else its file name). llama-cpp-python answers requests for any model name, so a
wrong name would go unnoticed: the name the server reports is what runs must send and record
(`ServerProcess.model`, also kept in the pid file; `served_model` asks a running server).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path

from knowledge_flow.context import DEFAULT_LOCAL_PORT
from knowledge_flow.server_launch.model_files import (
    DEFAULT_MODEL,
    INSTALL_HINT,
    QWEN_05B,
    QWEN_15B,
    PackagedModel,
    cache_dir,
    ensure_model,
    installed,
    packaged_model,
    served_name_for,
)
from knowledge_flow.server_launch.process import (
    ServerError,
    ServerProcess,
    read_pid_file,
    served_model,
    start_server,
)

DEFAULT_N_CTX = 4096

__all__ = [
    "DEFAULT_N_CTX",
    "command",
    "local_base_url",
    "pid_file",
    "preferred_model",
    "resolve_model",
    "served_model",
    "servers_dir",
    "spare_threads",
    "start_local",
    "stop_servers",
]


def local_base_url(host: str = "127.0.0.1", port: int = DEFAULT_LOCAL_PORT) -> str:
    return f"http://{host}:{port}/v1"


def pid_file(port: int = DEFAULT_LOCAL_PORT) -> Path:
    return servers_dir() / f"local-{port}.json"


def servers_dir() -> Path:
    """Pid files of the servers `kflow serve` started, one per port."""
    return cache_dir() / "servers"


def command(model_path: Path, host: str, port: int, n_ctx: int, alias: str, threads: int | None = None) -> list[str]:
    count = str(threads or max(1, os.cpu_count() or 1))
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
        count,
        "--n_threads_batch",
        count,
    ]


def spare_threads() -> int:
    """Cores that other work leaves free: the cores less the 1-minute load average (rounded), at least 1. On a
    machine busy with other work, llama.cpp decodes far faster with fewer threads than cores (measured on two
    cores with a load of 5: 0.7 tokens/s with 2 threads, 7 with 1), because its threads wait for each other."""
    cores = max(1, os.cpu_count() or 1)
    try:
        load = os.getloadavg()[0]
    except OSError:
        return cores
    return max(1, min(cores, cores - round(load)))


def preferred_model() -> PackagedModel:
    """The packaged model a command starts when none is named: the 1.5B one when its slices are installed (it
    answers most GSM8K problems; the 0.5B one answers almost none), else the 0.5B one. `start_local` itself
    keeps the 0.5B default (fast, the test suite's model)."""
    return QWEN_15B if installed(QWEN_15B) else QWEN_05B


def resolve_model(
    model: str | None = None,
    model_path: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[Path, str]:
    """(GGUF file, served name) for a packaged model by name (default: the 0.5B) or a GGUF file."""
    if model is not None and model_path is not None:
        raise ServerError("give either a packaged model (--model) or a GGUF file (--model-path), not both")
    if model_path is not None:
        if not model_path.is_file():
            raise ServerError(f"model file {model_path} does not exist")
        return model_path, served_name_for(model_path)
    chosen: PackagedModel = packaged_model(model or DEFAULT_MODEL)
    return ensure_model(progress=progress, model=chosen), chosen.served_name


def start_local(
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_LOCAL_PORT,
    model: str | None = None,
    model_path: Path | None = None,
    n_ctx: int = DEFAULT_N_CTX,
    alias: str | None = None,
    threads: int | None = None,
    write_pid_file: bool = True,
    progress: Callable[[str], None] | None = None,
) -> ServerProcess:
    """Assemble the packaged model if needed and start the server; returns once it answers. `model` names a
    packaged model (default: the 0.5B), `model_path` any GGUF file; `alias` overrides the served name."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise ServerError(f"the embedded CPU server needs the local extra: {INSTALL_HINT}")
    path, name = resolve_model(model, model_path, progress)
    served = alias or name
    say = progress or (lambda _message: None)
    base_url = local_base_url(host, port)
    log_path = servers_dir() / f"local-{port}.log"
    say(f"starting the local model server for {served} on {base_url} (log: {log_path})")
    return start_server(
        command(path, host, port, n_ctx, served, threads),
        base_url=base_url,
        host=host,
        port=port,
        log_path=log_path,
        pid_path=pid_file(port) if write_pid_file else None,
        model=served,
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
