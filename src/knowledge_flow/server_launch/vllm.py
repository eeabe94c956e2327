"""Start vLLM's OpenAI-compatible server with the settings the original work used.

The profiles were written for vLLM 0.10.2 (`vllm serve --help` of that release); later releases renamed some
attention backends (``TRITON_ATTN_VLLM_V1`` became ``TRITON_ATTN``): override with ``--env`` there.

- ``gpt-oss-120b``: ``VLLM_ATTENTION_BACKEND=TRITON_ATTN_VLLM_V1``, ``VLLM_USE_FLASHINFER_MOE_MXFP4_MXFP8=1``,
  ``--max-model-len 131072``, ``--no-enable-prefix-caching`` (prefix caching off, as in the original runs).
- ``qwen3-235b-thinking``: ``VLLM_ATTENTION_BACKEND=FLASH_ATTN``, ``--max-model-len 262144``,
  ``--reasoning-parser qwen3`` (the reasoning text comes back in its own field).
- ``generic``: nothing beyond the common flags.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from knowledge_flow.server_launch.process import ServerError, ServerProcess, start_server

VLLM_VERSION = "0.10.2"
GPU_INSTALL_HINT = "pip install 'knowledge-flow[gpu]' (vLLM with CUDA, on a GPU node)"


@dataclass(frozen=True)
class Profile:
    name: str
    env: Mapping[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()
    max_model_len: int | None = None
    description: str = ""


PROFILES: dict[str, Profile] = {
    "gpt-oss-120b": Profile(
        "gpt-oss-120b",
        env={"VLLM_ATTENTION_BACKEND": "TRITON_ATTN_VLLM_V1", "VLLM_USE_FLASHINFER_MOE_MXFP4_MXFP8": "1"},
        args=("--no-enable-prefix-caching",),
        max_model_len=131072,
        description="openai/gpt-oss-120b as in the original runs on B200 GPUs",
    ),
    "qwen3-235b-thinking": Profile(
        "qwen3-235b-thinking",
        env={"VLLM_ATTENTION_BACKEND": "FLASH_ATTN"},
        args=("--reasoning-parser", "qwen3"),
        max_model_len=262144,
        description="Qwen/Qwen3-235B-A22B-Thinking-2507 as in the original runs",
    ),
    "generic": Profile("generic", description="any model: only the common flags"),
}


@dataclass(frozen=True)
class VllmLaunch:
    """The exact command and environment of one `vllm serve`."""

    command: list[str]
    env: dict[str, str]
    host: str
    port: int

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def render(self) -> str:
        import shlex

        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        return f"{env} {shlex.join(self.command)}".strip()


def build_launch(
    *,
    profile: str,
    model: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    tensor_parallel_size: int = 1,
    data_parallel_size: int = 1,
    max_model_len: int | None = None,
    extra_args: Sequence[str] = (),
    extra_env: Mapping[str, str] | None = None,
    executable: str = "vllm",
) -> VllmLaunch:
    if profile not in PROFILES:
        raise ServerError(f"unknown profile {profile!r}; choose one of: {', '.join(PROFILES)}")
    if tensor_parallel_size < 1 or data_parallel_size < 1:
        raise ServerError("--tensor-parallel-size and --data-parallel-size must be at least 1")
    if not 0 < port < 65536:
        raise ServerError(f"--port must be between 1 and 65535, got {port}")
    chosen = PROFILES[profile]
    length = max_model_len or chosen.max_model_len
    command = [executable, "serve", model, "--host", host, "--port", str(port)]
    command += ["--tensor-parallel-size", str(tensor_parallel_size)]
    if data_parallel_size > 1:
        command += ["--data-parallel-size", str(data_parallel_size)]
    if length:
        command += ["--max-model-len", str(length)]
    command += list(chosen.args) + list(extra_args)
    return VllmLaunch(command, {**chosen.env, **(extra_env or {})}, host, port)


def start_vllm(launch: VllmLaunch, *, log_path: Path, pid_path: Path, ready_timeout_s: float) -> ServerProcess:
    """Start the server and wait for ``/health`` and ``/v1/models``; on failure raise with the log tail."""
    if shutil.which(launch.command[0]) is None:
        raise ServerError(f"`{launch.command[0]}` is not installed here. Install vLLM with: {GPU_INSTALL_HINT}")
    return start_server(
        launch.command,
        base_url=launch.base_url,
        host=launch.host,
        port=launch.port,
        log_path=log_path,
        pid_path=pid_path,
        env=launch.env,
        ready_timeout_s=ready_timeout_s,
        health_url=f"http://{launch.host}:{launch.port}/health",
    )
