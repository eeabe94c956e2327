"""`kflow serve`: start vLLM or the embedded CPU server in the background, and stop them."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from knowledge_flow.cli.common import err, fail, out


def serve_vllm(
    model: Annotated[
        str, typer.Option(help="Model id or local path; `qwen2.5-coder-0.5b` is the packaged model (converted once).")
    ],
    profile: Annotated[str, typer.Option(help="gpt-oss-120b, qwen3-235b-thinking or generic.")] = "generic",
    tensor_parallel_size: Annotated[int, typer.Option("--tensor-parallel-size", help="GPUs per model copy.")] = 1,
    data_parallel_size: Annotated[int, typer.Option("--data-parallel-size", help="Model copies on this node.")] = 1,
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    host: Annotated[str, typer.Option(help="Address to bind (127.0.0.1 unless you serve other nodes).")] = "127.0.0.1",
    max_model_len: Annotated[int | None, typer.Option("--max-model-len", help="Context length.")] = None,
    enforce_eager: Annotated[
        bool, typer.Option("--enforce-eager", help="No CUDA graphs / torch.compile (faster start).")
    ] = False,
    python: Annotated[
        str | None,
        typer.Option("--python", help="Interpreter that has vLLM (env KFLOW_VLLM_PYTHON; default: this one)."),
    ] = None,
    vllm_version: Annotated[
        str | None,
        typer.Option(
            "--vllm-version",
            help="Use the profile settings for this vLLM (0.10.2, 0.32.0); default: the installed one's.",
        ),
    ] = None,
    extra_arg: Annotated[
        list[str] | None, typer.Option("--extra-arg", help="Extra vLLM server argument(s) (repeatable).")
    ] = None,
    env: Annotated[list[str] | None, typer.Option("--env", help="Extra environment KEY=VALUE (repeatable).")] = None,
    ready_timeout: Annotated[float, typer.Option("--ready-timeout", help="Seconds to wait for readiness.")] = 1800.0,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check and print the command and environment only.")
    ] = False,
) -> None:
    """Start vLLM's OpenAI-compatible server with a profile, checked against the installed vLLM first (pid file;
    stop with `kflow serve stop`)."""
    from knowledge_flow.server_launch.local import servers_dir
    from knowledge_flow.server_launch.model_files import ModelError
    from knowledge_flow.server_launch.process import ServerError, port_in_use
    from knowledge_flow.server_launch.vllm import build_launch, check_launch, prepare_model, profile_release, start_vllm
    from knowledge_flow.server_launch.vllm_install import (
        INSTALL_HINT,
        VllmSetupError,
        capabilities,
        default_python,
        find_vllm,
    )

    def stop_with(message: str, code: int) -> typer.Exit:
        sys.stderr.write(f"error: {message}\n")  # one line, unwrapped
        return typer.Exit(code)

    interpreter = python or default_python()
    try:
        extra_env = {}
        for item in env or []:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise VllmSetupError(f"--env takes KEY=VALUE, got {item!r}")
            extra_env[key] = value
        try:
            extra_args = [a for arg in extra_arg or [] for a in shlex.split(arg)]
        except ValueError as exc:
            raise VllmSetupError(f"--extra-arg: {exc}") from None
        install = find_vllm(interpreter)
        if install is None and not dry_run:
            raise VllmSetupError(f"the interpreter {interpreter} has no vLLM; {INSTALL_HINT}")
        release = profile_release(install.version if install else None, vllm_version)
        launch = build_launch(
            profile=profile,
            model=model,
            python=interpreter,
            release=release,
            host=host,
            port=port,
            tensor_parallel_size=tensor_parallel_size,
            data_parallel_size=data_parallel_size,
            max_model_len=max_model_len,
            enforce_eager=enforce_eager,
            extra_args=extra_args,
            extra_env=extra_env,
        )
        if install is not None:
            check_launch(launch, install, capabilities(install))
    except VllmSetupError as exc:
        raise stop_with(" ".join(str(exc).split()), 2) from None
    installed = f"vLLM {install.version} at {interpreter}" if install else f"no vLLM at {interpreter}: not checked"
    settings_note = f"profile {profile} with the settings for vLLM {release} ({installed})\n"
    if dry_run:
        sys.stderr.write(settings_note)
        sys.stdout.write(launch.render() + "\n")
        return
    if port_in_use(host, port):
        raise stop_with(f"port {port} on {host} is already in use; choose another with --port", 1)
    sys.stderr.write(settings_note)
    log_path = servers_dir() / f"vllm-{port}.log"
    try:
        prepare_model(launch, progress=lambda m: err.print(Text(m)))
        err.print(Text(f"starting: {launch.render()}\nlog: {log_path}"))
        server = start_vllm(
            launch, log_path=log_path, pid_path=servers_dir() / f"vllm-{port}.json", ready_timeout_s=ready_timeout
        )
    except (ServerError, ModelError) as exc:
        raise fail(str(exc), code=1) from None
    out.print(f"vLLM server running at {server.base_url} (pid {server.pid}, log {server.log_path})")


def serve_local(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8765,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="A packaged model: qwen2.5-coder-1.5b (the local-1.5b extra; the default when installed) or "
            "qwen2.5-coder-0.5b (the local extra; the default otherwise).",
        ),
    ] = None,
    model_path: Annotated[
        Path | None, typer.Option("--model-path", help="Another GGUF file, served under its own model name.")
    ] = None,
    n_ctx: Annotated[int, typer.Option("--n-ctx", help="Context length.")] = 4096,
    threads: Annotated[
        int | None,
        typer.Option("--threads", min=1, help="CPU threads (default: all cores; 1 decodes faster on a busy machine)."),
    ] = None,
) -> None:
    """Start the embedded CPU model server in the background (pid file; stop with `kflow serve stop`).

    The server reports the model's own name (the packaged model's, or a GGUF file's `general.name`); runs
    against it send that name (`--model NAME`)."""
    from knowledge_flow.server_launch.local import preferred_model, start_local
    from knowledge_flow.server_launch.model_files import ModelError, packaged_model
    from knowledge_flow.server_launch.process import ServerError
    from knowledge_flow.user_files import UserFileError, require_regular

    if model is not None and model_path is not None:
        raise fail("give either --model (a packaged model) or --model-path (a GGUF file), not both")
    try:
        if model is not None:
            packaged_model(model)
        if model_path is not None:
            require_regular(model_path.expanduser(), "model file")
    except (ModelError, UserFileError) as exc:
        raise fail(str(exc)) from None
    try:
        server = start_local(
            host=host,
            port=port,
            model=model if model is not None or model_path is not None else preferred_model().name,
            model_path=model_path,
            n_ctx=n_ctx,
            threads=threads,
            progress=lambda m: err.print(m),
        )
    except (ServerError, ModelError) as exc:
        raise fail(str(exc), code=1) from None
    out.print(
        f"local model server for {server.model} running at {server.base_url} (pid {server.pid}, log {server.log_path})"
    )


def serve_stop(
    port: Annotated[int | None, typer.Option(help="Only the server on this port.")] = None,
) -> None:
    """Stop the servers started by `kflow serve` (by their pid files)."""
    from knowledge_flow.server_launch.local import stop_servers

    stopped = stop_servers(port)
    for server in stopped:
        out.print(f"stopped {server.base_url} (pid {server.pid})")
    if not stopped:
        out.print("no server was running")
