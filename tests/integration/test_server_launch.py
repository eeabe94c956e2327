"""`kflow serve`: profiles (dry run), the whole lifecycle against a stand-in `vllm`, and replica routing."""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, SHARED_DATASETS, run_kflow
from tests.support.eval_script import eval_responder, iteration_of
from tests.support.scripted_server import ScriptedServer


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--profile", "gpt-oss-120b", "--model", "openai/gpt-oss-120b", "--tensor-parallel-size", "8"],
            "VLLM_ATTENTION_BACKEND=TRITON_ATTN_VLLM_V1 VLLM_USE_FLASHINFER_MOE_MXFP4_MXFP8=1 vllm serve "
            "openai/gpt-oss-120b --host 127.0.0.1 --port 8000 --tensor-parallel-size 8 --max-model-len 131072 "
            "--no-enable-prefix-caching",
        ),
        (
            [
                "--profile",
                "qwen3-235b-thinking",
                "--model",
                "Qwen/Qwen3-235B-A22B-Thinking-2507",
                "--tensor-parallel-size",
                "8",
                "--port",
                "9000",
            ],
            "VLLM_ATTENTION_BACKEND=FLASH_ATTN vllm serve Qwen/Qwen3-235B-A22B-Thinking-2507 --host 127.0.0.1 "
            "--port 9000 --tensor-parallel-size 8 --max-model-len 262144 --reasoning-parser qwen3",
        ),
        (
            [
                "--model",
                "/models/my model",
                "--data-parallel-size",
                "4",
                "--max-model-len",
                "32768",
                "--extra-arg",
                "--gpu-memory-utilization 0.9",
                "--env",
                "HF_HUB_OFFLINE=1",
                "--host",
                "0.0.0.0",
            ],
            "HF_HUB_OFFLINE=1 vllm serve '/models/my model' --host 0.0.0.0 --port 8000 --tensor-parallel-size 1 "
            "--data-parallel-size 4 --max-model-len 32768 --gpu-memory-utilization 0.9",
        ),
    ],
)
def test_dry_run_prints_exact_command(args: list[str], expected: str) -> None:
    proc = run_kflow(["serve", "vllm", *args, "--dry-run"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == expected


def test_unknown_profile_is_a_usage_error() -> None:
    proc = run_kflow(["serve", "vllm", "--model", "m", "--profile", "huge", "--dry-run"])
    assert proc.returncode == 2 and "unknown profile 'huge'" in proc.stderr


@pytest.fixture
def fake_vllm_path(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "vllm"
    # shaped like vLLM's console script: the interpreter runs a file named `vllm`
    script.write_text(
        f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(REPO)!r})\n"
        "from tests.support.fake_vllm import main\nmain()\n"
    )
    script.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "KFLOW_CACHE": str(tmp_path / "cache")}


def test_lifecycle_start_health_stop(fake_vllm_path: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    proc = run_kflow(
        [
            "serve",
            "vllm",
            "--model",
            "openai/gpt-oss-120b",
            "--profile",
            "gpt-oss-120b",
            "--port",
            str(port),
            "--ready-timeout",
            "60",
        ],
        env=fake_vllm_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"http://127.0.0.1:{port}/v1" in proc.stdout
    pid_file = tmp_path / "cache" / "servers" / f"vllm-{port}.json"
    record = json.loads(pid_file.read_text())
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
        assert response.status == 200
    log = (tmp_path / "cache" / "servers" / f"vllm-{port}.log").read_text()
    assert f"serve openai/gpt-oss-120b --host 127.0.0.1 --port {port}" in log
    assert "VLLM_ATTENTION_BACKEND=TRITON_ATTN_VLLM_V1" in log

    # the server is usable by kflow
    solved = run_kflow(
        [
            "solve",
            "1+0?",
            "--base-url",
            f"http://127.0.0.1:{port}/v1",
            "--iterations",
            "1",
            "--db",
            str(tmp_path / "s.db"),
            "--json",
        ]
    )
    assert solved.returncode == 0, solved.stderr
    assert json.loads(solved.stdout)["answers"] == ["1"]

    stopped = run_kflow(["serve", "stop", "--port", str(port)], env=fake_vllm_path)
    assert stopped.returncode == 0 and f"pid {record['pid']}" in stopped.stdout
    deadline = time.monotonic() + 10
    while Path(f"/proc/{record['pid']}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{record['pid']}").exists() or "Z" in Path(f"/proc/{record['pid']}/stat").read_text()
    assert not pid_file.exists()
    again = run_kflow(["serve", "stop"], env=fake_vllm_path)
    assert "no server was running" in again.stdout


def test_server_that_dies_at_start_shows_its_log(fake_vllm_path: dict[str, str]) -> None:
    port = free_port()
    proc = run_kflow(
        ["serve", "vllm", "--model", "m", "--port", str(port), "--ready-timeout", "60"],
        env={**fake_vllm_path, "FAKE_VLLM_MODE": "die"},
    )
    assert proc.returncode == 1
    text = " ".join(proc.stderr.split())
    assert "exited with code 3" in text
    assert "the model does not fit in GPU memory" in text


def test_readiness_timeout(fake_vllm_path: dict[str, str]) -> None:
    port = free_port()
    proc = run_kflow(
        ["serve", "vllm", "--model", "m", "--port", str(port), "--ready-timeout", "1"],
        env={**fake_vllm_path, "FAKE_VLLM_MODE": "slow", "FAKE_VLLM_DELAY": "30"},
    )
    assert proc.returncode == 1
    assert "did not become ready" in " ".join(proc.stderr.split())


def test_port_in_use_is_reported(fake_vllm_path: dict[str, str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run_kflow(["serve", "vllm", "--model", "m", "--port", str(port)], env=fake_vllm_path)
    assert proc.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in " ".join(proc.stderr.split())


def test_missing_vllm_explains_how_to_install(tmp_path: Path) -> None:
    proc = run_kflow(["serve", "vllm", "--model", "m"], env={"PATH": str(tmp_path), "KFLOW_CACHE": str(tmp_path)})
    assert proc.returncode == 1
    assert "pip install 'knowledge-flow[gpu]'" in " ".join(proc.stderr.split())


def test_replicas_spread_load_and_survive_a_crash(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    data = [json.loads(line) for line in (SHARED_DATASETS / "aime_2025.jsonl").read_text().splitlines()[:8]]
    dataset = tmp_path / "eight.jsonl"
    dataset.write_text("\n".join(json.dumps(row) for row in data))
    order = [row["problem"] for row in data]

    def answer(key: str, k: int) -> str:
        return str(order.index(key) + k)

    delays = {p: 0.05 for p in order}
    first = scripted(eval_responder(answer, delays), keys=order).start()
    second = scripted(eval_responder(answer, delays), keys=order).start()

    def crash_first() -> None:
        while len(first.delivered()) < 5:
            time.sleep(0.01)
        first.kill()

    killer = threading.Thread(target=crash_first, daemon=True)
    killer.start()
    iterations = 4
    proc = run_kflow(
        [
            "eval",
            "--dataset",
            str(dataset),
            "--iterations",
            str(iterations),
            "--concurrency",
            "8",
            "--base-url",
            f"{first.base_url},{second.base_url}",
            "--db",
            str(tmp_path / "r.db"),
            "--output-dir",
            str(tmp_path / "results"),
            "--run-id",
            "rep",
            "--json",
        ]
    )
    killer.join(timeout=5)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["finished"] == 8
    assert first.dead and len(first.delivered()) >= 5 and len(second.delivered()) >= 5

    delivered = [(r.key, iteration_of(r.prompt)) for r in first.delivered() + second.delivered()]
    assert sorted(delivered) == sorted((p, k) for p in order for k in range(iterations))  # each exactly once

    replicas = {entry["url"]: entry for entry in result["replicas"]}
    assert set(replicas) == {first.base_url, second.base_url}
    assert replicas[first.base_url]["rollouts"] == len(first.delivered())
    assert replicas[second.base_url]["rollouts"] == len(second.delivered())
    assert replicas[first.base_url]["failed_requests"] >= 1
    assert sum(e["completion_tokens"] for e in replicas.values()) > 0
