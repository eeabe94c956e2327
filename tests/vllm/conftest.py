"""The real-vLLM lane: tests against vLLM's own OpenAI server (CPU build), started by our `kflow serve vllm`.

The interpreter with vLLM is `KFLOW_VLLM_PYTHON` (`make test` builds `.venv-vllm` and sets it, with
`KFLOW_REQUIRE_VLLM=1`). Without it the lane is skipped, or fails when `KFLOW_REQUIRE_VLLM=1`.

Fixtures:

- `vllm_server` (session): the packaged Qwen2.5-Coder-0.5B-Instruct (converted once to bf16, cached beside the
  GGUF), `--enforce-eager`, `VLLM_CPU_KVCACHE_SPACE=1`, `--max-model-len 2048`, on a free port. Use
  `vllm_server.base_url` (`.../v1`), `.root_url` (for `/tokenize`, `/detokenize`, `/metrics`, `/health`),
  `.model` (the served name), `.max_model_len`, `.metric(name, **labels)`, `.post(path, body)`, `.get(path)`,
  and `.kflow_env` (environment for `run_kflow` so that kflow finds the same cache).
- `vllm_thinking_server` (module): a second server with `tests/vllm/thinking_template.jinja` as chat template,
  `--reasoning-parser qwen3`, and structured outputs applied inside the thinking block too
  (`--structured-outputs-config.enable_in_reasoning true`), so that a test can force the real model to write
  a given shape with `"structured_outputs": {"regex": ...}`. Same attributes.
- `start_vllm_server(...)` starts another one (stop it with `stop_vllm_server`).

Each server takes about 5.4 GB of memory (resident, all processes) and 45-75 s to start on two cores; two can
run at once on a 24 GB machine.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import run_kflow

LANE_DIR = Path(__file__).resolve().parent
THINKING_TEMPLATE = LANE_DIR / "thinking_template.jinja"
PACKAGED_MODEL = "qwen2.5-coder-0.5b"
SERVED_NAME = "qwen2.5-coder-0.5b-instruct"
MAX_MODEL_LEN = 2048
SERVER_ENV = ("VLLM_CPU_KVCACHE_SPACE=1",)
#: vLLM logs the sampling parameters of every request it receives: what the engine used, not what we meant.
LOG_REQUESTS = "--enable-log-requests"
THINKING_ARGS = (
    LOG_REQUESTS,
    f"--chat-template {THINKING_TEMPLATE}",
    "--reasoning-parser qwen3",
    "--structured-outputs-config.enable_in_reasoning true",
)
START_TIMEOUT_S = 900  # conversion (first run only, about a minute) + start


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "vllm: the real-vLLM lane (needs KFLOW_VLLM_PYTHON)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if LANE_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.vllm)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class VllmServer:
    """A vLLM server started by `kflow serve vllm` for the lane."""

    port: int
    model: str
    max_model_len: int
    pid: int
    log_path: Path
    pid_path: Path
    cache: Path
    python: str
    args: tuple[str, ...] = ()
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=600))

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    @property
    def kflow_env(self) -> dict[str, str]:
        return {"KFLOW_CACHE": str(self.cache)}

    def get(self, path: str) -> httpx.Response:
        return self.client.get(self.root_url + path)

    def post(self, path: str, body: Mapping[str, Any]) -> httpx.Response:
        return self.client.post(self.root_url + path, json=dict(body))

    def metrics(self) -> list[tuple[str, dict[str, str], float]]:
        """Every sample of /metrics as (name, labels, value)."""
        samples = []
        for line in self.get("/metrics").text.splitlines():
            match = re.match(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)$", line)
            if line.startswith("#") or match is None:
                continue
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
            samples.append((match.group(1), labels, float(match.group(3))))
        return samples

    def received(self) -> list[str]:
        """The sampling parameters of every request vLLM logged (with `--enable-log-requests`), in order."""
        text = self.log_path.read_text(errors="replace")
        return re.findall(r"Received request \S+: params: (SamplingParams\(.*?\)), lora_request", text)

    def aborted(self) -> list[str]:
        """The ids of the requests vLLM logged as aborted (with `--enable-log-requests`; a client that closed its
        stream), in order."""
        return re.findall(r"Request (\S+) aborted\.", self.log_path.read_text(errors="replace"))

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of metric `name` whose labels include `labels` (0.0 when none)."""
        return sum(
            value
            for sample, sample_labels, value in self.metrics()
            if sample == name and all(sample_labels.get(k) == v for k, v in labels.items())
        )


@pytest.fixture(scope="session")
def vllm_python() -> str:
    """The interpreter with vLLM; skips the lane without one (fails instead when KFLOW_REQUIRE_VLLM=1)."""
    python = os.environ.get("KFLOW_VLLM_PYTHON", "")
    required = os.environ.get("KFLOW_REQUIRE_VLLM") == "1"
    problem = None
    if not python:
        problem = "KFLOW_VLLM_PYTHON is not set (`make vllm-env` builds .venv-vllm; `make test` sets it)"
    elif not os.access(python, os.X_OK):
        problem = f"KFLOW_VLLM_PYTHON={python} is not an executable (run `make vllm-env`)"
    if problem:
        if required:
            pytest.fail(f"the real-vLLM lane is required (KFLOW_REQUIRE_VLLM=1) but {problem}")
        pytest.skip(f"real-vLLM lane: {problem}")
    return python


@pytest.fixture(scope="session")
def lane_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A KFLOW_CACHE of the session whose `models/` and `vllm-check/` are the user's own cache folders (the
    conversion and the vLLM check are done once per machine); pid files and logs stay in the session."""
    from knowledge_flow.server_launch.model_files import cache_dir

    real = cache_dir()
    cache = tmp_path_factory.mktemp("kflow-cache")
    for name in ("models", "vllm-check"):
        (real / name).mkdir(parents=True, exist_ok=True)
        (cache / name).symlink_to(real / name, target_is_directory=True)
    return cache


def start_vllm_server(
    python: str,
    cache: Path,
    *,
    max_model_len: int = MAX_MODEL_LEN,
    extra_args: Sequence[str] = (),
    env: Sequence[str] = SERVER_ENV,
    port: int | None = None,
) -> VllmServer:
    """`kflow serve vllm --model qwen2.5-coder-0.5b --enforce-eager ...` on a free port; fails the test (with
    kflow's output and the log tail) when it does not start."""
    port = port or free_port()
    args = [
        "serve",
        "vllm",
        "--model",
        PACKAGED_MODEL,
        "--enforce-eager",
        "--python",
        python,
        "--port",
        str(port),
        "--max-model-len",
        str(max_model_len),
        "--ready-timeout",
        str(START_TIMEOUT_S),
    ]
    for item in env:
        args += ["--env", item]
    for item in extra_args:
        args += ["--extra-arg", item]
    proc = run_kflow(args, env={"KFLOW_CACHE": str(cache)}, timeout=START_TIMEOUT_S + 120)
    pid_path = cache / "servers" / f"vllm-{port}.json"
    log_path = cache / "servers" / f"vllm-{port}.log"
    if proc.returncode != 0 or not pid_path.is_file():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:]) if log_path.is_file() else ""
        pytest.fail(f"kflow serve vllm failed ({proc.returncode}):\n{proc.stderr}\n{proc.stdout}\nlog:\n{tail}")
    record = json.loads(pid_path.read_text())
    return VllmServer(
        port=port,
        model=SERVED_NAME,
        max_model_len=max_model_len,
        pid=int(record["pid"]),
        log_path=log_path,
        pid_path=pid_path,
        cache=cache,
        python=python,
        args=tuple(args),
    )


def process_group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_vllm_server(server: VllmServer, timeout_s: float = 30.0) -> None:
    """`kflow serve stop --port P`; then makes sure no process of the server's group is left."""
    server.client.close()
    run_kflow(["serve", "stop", "--port", str(server.port)], env=server.kflow_env, timeout=120)
    deadline = time.monotonic() + timeout_s
    while process_group_alive(server.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if process_group_alive(server.pid):
        os.killpg(server.pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def vllm_server(vllm_python: str, lane_cache: Path) -> Iterator[VllmServer]:
    """The lane's vLLM server (packaged model, max_model_len 2048), shared by the whole session."""
    server = start_vllm_server(vllm_python, lane_cache, extra_args=(LOG_REQUESTS,))
    yield server
    stop_vllm_server(server)


@pytest.fixture(scope="module")
def vllm_thinking_server(vllm_python: str, lane_cache: Path) -> Iterator[VllmServer]:
    """A server with a thinking chat template (generation prompt ending in `<think>\\n`) and the qwen3
    reasoning parser; structured outputs constrain the thinking block too."""
    server = start_vllm_server(vllm_python, lane_cache, extra_args=THINKING_ARGS)
    yield server
    stop_vllm_server(server)
