"""`kflow serve vllm` against the real vLLM (CPU build): the command, the checks before start, start, readiness,
pid file, log, port in use, failures at start, stop. Assertions read what vLLM itself reports (its /v1/models,
/metrics, /health, its log and its process) as well as our records."""

from __future__ import annotations

import json
import shlex
import socket
import time
from pathlib import Path

import httpx
import pytest

from knowledge_flow.server_launch.model_files import MODEL_SHA256
from knowledge_flow.server_launch.vllm_install import find_vllm
from knowledge_flow.server_launch.vllm_model import verify_converted
from tests.conftest import run_kflow
from tests.vllm.conftest import (
    PACKAGED_MODEL,
    SERVED_NAME,
    THINKING_ARGS,
    VllmServer,
    free_port,
    process_group_alive,
    start_vllm_server,
    stop_vllm_server,
)

SERVER = "-m vllm.entrypoints.openai.api_server"


def installed_version(python: str) -> str:
    install = find_vllm(python)
    assert install is not None
    return install.version


def serve(python: str, cache: Path, *args: str, timeout: float = 300) -> tuple[int, str, str]:
    proc = run_kflow(["serve", "vllm", "--python", python, *args], env={"KFLOW_CACHE": str(cache)}, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def test_dry_run_prints_the_checked_command(vllm_python: str, lane_cache: Path) -> None:
    version = installed_version(vllm_python)
    rc, out, err = serve(
        vllm_python,
        lane_cache,
        "--model",
        PACKAGED_MODEL,
        "--enforce-eager",
        "--port",
        "8123",
        "--max-model-len",
        "1024",
        "--env",
        "VLLM_CPU_KVCACHE_SPACE=1",
        "--dry-run",
    )
    assert rc == 0, err
    model_dir = lane_cache / "models" / "qwen2.5-coder-0.5b-instruct-bf16"
    assert out == (
        f"VLLM_CPU_KVCACHE_SPACE=1 {vllm_python} {SERVER} --model {model_dir} --served-model-name {SERVED_NAME} "
        "--host 127.0.0.1 --port 8123 --tensor-parallel-size 1 --max-model-len 1024 --enforce-eager "
        "--generation-config vllm --max-logprobs 21\n"
    )
    assert f"settings for vLLM 0.32.0 (vLLM {version} at {vllm_python})" in err
    assert not (lane_cache / "servers" / "vllm-8123.log").exists()


def test_dry_run_of_a_profile_uses_the_installed_releases_settings(vllm_python: str, lane_cache: Path) -> None:
    rc, out, err = serve(
        vllm_python,
        lane_cache,
        "--profile",
        "gpt-oss-120b",
        "--model",
        "openai/gpt-oss-120b",
        "--tensor-parallel-size",
        "8",
        "--dry-run",
    )
    assert rc == 0, err
    assert out == (
        f"{vllm_python} {SERVER} --model openai/gpt-oss-120b --host 127.0.0.1 --port 8000 --tensor-parallel-size 8 "
        "--max-model-len 131072 --attention-backend TRITON_ATTN --no-enable-prefix-caching --generation-config vllm "
        "--max-logprobs 21\n"
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param(
            ["--extra-arg", "--disable-log-requests"],
            "has no option --disable-log-requests (from --extra-arg)",
            id="renamed-flag",
        ),
        pytest.param(
            ["--env", "VLLM_ATTENTION_BACKEND=TRITON_ATTN"],
            "does not read the environment variable VLLM_ATTENTION_BACKEND (from --env); this release sets the "
            "attention backend with the --attention-backend flag",
            id="unknown-env",
        ),
        pytest.param(
            ["--profile", "gpt-oss-120b", "--vllm-version", "0.10.2"],
            "does not read the environment variable VLLM_ATTENTION_BACKEND (from profile 'gpt-oss-120b' for "
            "vLLM 0.10.2)",
            id="0.10.2-profile-on-current-vllm",
        ),
        pytest.param(
            ["--extra-arg", "--attention-backend TRITON_ATTN_VLLM_V1"],
            "has no attention backend 'TRITON_ATTN_VLLM_V1' (from --extra-arg); it has: ",
            id="renamed-backend",
        ),
        pytest.param(
            ["--extra-arg", "--reasoning-parser qwen9"],
            "has no reasoning parser 'qwen9' (from --extra-arg)",
            id="unknown-reasoning-parser",
        ),
    ],
)
def test_a_mismatch_with_the_installed_vllm_stops_before_anything_starts(
    vllm_python: str, lane_cache: Path, args: list[str], expected: str
) -> None:
    version = installed_version(vllm_python)
    port = free_port()
    started = time.monotonic()
    rc, out, err = serve(vllm_python, lane_cache, "--model", PACKAGED_MODEL, "--port", str(port), *args)
    elapsed = time.monotonic() - started
    assert rc == 2, err
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: vLLM {version} at {vllm_python} ")
    assert expected in lines[0]
    assert elapsed < 60  # the check is cached per interpreter and version: no model is loaded
    assert port_free(port)
    assert not (lane_cache / "servers" / f"vllm-{port}.log").exists()
    assert not (lane_cache / "servers" / f"vllm-{port}.json").exists()


def test_session_server_is_what_was_asked_for(vllm_server: VllmServer) -> None:
    record = json.loads(vllm_server.pid_path.read_text())
    assert record == {
        "pid": vllm_server.pid,
        "base_url": vllm_server.base_url,
        "log": str(vllm_server.log_path),
        "program": vllm_server.python,
        "model": vllm_server.model,
    }
    # what vLLM reports
    health = vllm_server.get("/health")
    assert (health.status_code, health.text) == (200, "")
    [served] = vllm_server.get("/v1/models").json()["data"]
    assert served["id"] == SERVED_NAME
    assert served["max_model_len"] == vllm_server.max_model_len == 2048
    assert served["root"] == str(vllm_server.cache / "models" / "qwen2.5-coder-0.5b-instruct-bf16")
    before = vllm_server.metric("vllm:generation_tokens_total")
    reply = vllm_server.post(
        "/v1/completions",
        {"model": SERVED_NAME, "prompt": "1, 2, 3,", "max_tokens": 3, "temperature": 0, "ignore_eos": True},
    )  # exactly 3 tokens, whatever the model would say next
    assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 3
    assert vllm_server.metric("vllm:generation_tokens_total") == before + 3
    assert vllm_server.metric("vllm:num_requests_running") == 0
    assert "vllm:kv_cache_usage_perc" in {name for name, _, _ in vllm_server.metrics()}
    # the process runs exactly the command of the dry run, with its environment
    dry = run_kflow([*vllm_server.args, "--dry-run"], env=vllm_server.kflow_env)
    assert dry.returncode == 0, dry.stderr
    cmdline = Path(f"/proc/{vllm_server.pid}/cmdline").read_bytes().decode().rstrip("\0").split("\0")
    rendered = shlex.split(dry.stdout)
    assert rendered == ["VLLM_CPU_KVCACHE_SPACE=1", *cmdline]
    environ = Path(f"/proc/{vllm_server.pid}/environ").read_bytes().split(b"\0")
    assert b"VLLM_CPU_KVCACHE_SPACE=1" in environ
    # vLLM's log: our flags reached it; omitted sampling parameters are not filled from generation_config.json
    log = vllm_server.log_path.read_text(errors="replace")
    assert "'enforce_eager': True" in log and "'generation_config': 'vllm'" in log
    assert "Default vLLM sampling parameters have been overridden" not in log


def test_a_port_in_use_is_reported_and_nothing_starts(vllm_server: VllmServer) -> None:
    log_size = vllm_server.log_path.stat().st_size
    record = vllm_server.pid_path.read_text()
    proc = run_kflow(
        ["serve", "vllm", "--python", vllm_server.python, "--model", PACKAGED_MODEL, "--port", str(vllm_server.port)],
        env=vllm_server.kflow_env,
    )
    assert proc.returncode == 1
    assert proc.stderr == f"error: port {vllm_server.port} on 127.0.0.1 is already in use; choose another with --port\n"
    assert proc.stdout == ""
    assert vllm_server.log_path.stat().st_size == log_size
    assert vllm_server.pid_path.read_text() == record
    assert vllm_server.get("/health").status_code == 200


def test_start_readiness_pid_file_and_stop_of_a_thinking_server(vllm_python: str, lane_cache: Path) -> None:
    """A second server, started from scratch with a chat template and a reasoning parser, then stopped."""
    server = start_vllm_server(vllm_python, lane_cache, max_model_len=1024, extra_args=THINKING_ARGS)
    try:
        assert server.pid_path.is_file() and server.log_path.is_file()
        [served] = server.get("/v1/models").json()["data"]
        assert (served["id"], served["max_model_len"]) == (SERVED_NAME, 1024)
        # the template reached vLLM: the generation prompt opens a think block; a final assistant message
        # without </think> is rendered after an empty, closed one
        question = [{"role": "user", "content": "Tom has 5 apples and buys 7 more. How many apples?"}]
        ids = server.post(
            "/tokenize", {"model": SERVED_NAME, "messages": question, "add_generation_prompt": True}
        ).json()["tokens"]
        text = server.post("/detokenize", {"model": SERVED_NAME, "tokens": ids}).json()["prompt"]
        assert text.endswith("<|im_start|>assistant\n<think>\n")
        prefill = [*question, {"role": "assistant", "content": "Let me count"}]
        body = {"model": SERVED_NAME, "messages": prefill, "add_generation_prompt": False}
        ids = server.post("/tokenize", {**body, "continue_final_message": True}).json()["tokens"]
        text = server.post("/detokenize", {"model": SERVED_NAME, "tokens": ids}).json()["prompt"]
        assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\nLet me count")
        # the reasoning parser reached vLLM, and structured outputs constrain the thinking block too
        shape = r"[A-Za-z ,]{5,40}\.\n</think>\n\n\[Answer\]: \\boxed\{12\}"
        reply = server.post(
            "/v1/chat/completions",
            {"model": SERVED_NAME, "messages": question, "max_tokens": 60, "structured_outputs": {"regex": shape}},
        ).json()
        message = reply["choices"][0]["message"]
        assert message["content"].strip() == "[Answer]: \\boxed{12}"
        assert message["reasoning"] and "</think>" not in message["reasoning"]
        assert process_group_alive(server.pid)
        stopped = run_kflow(["serve", "stop", "--port", str(server.port)], env=server.kflow_env)
        assert stopped.returncode == 0
        assert stopped.stdout.strip() == f"stopped {server.base_url} (pid {server.pid})"
        deadline = time.monotonic() + 30
        while process_group_alive(server.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not process_group_alive(server.pid)  # the engine core and worker processes too
        assert not server.pid_path.exists()
        assert port_free(server.port)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.root_url}/health", timeout=5)
        again = run_kflow(["serve", "stop", "--port", str(server.port)], env=server.kflow_env)
        assert again.stdout.strip() == "no server was running"
    finally:
        stop_vllm_server(server)


def test_a_server_that_dies_at_start_shows_its_log(vllm_python: str, lane_cache: Path, tmp_path: Path) -> None:
    port = free_port()
    missing = tmp_path / "no-such-model"
    rc, _out, err = serve(vllm_python, lane_cache, "--model", str(missing), "--port", str(port))
    assert rc == 1
    text = " ".join(err.split())
    assert "the server exited with code" in text and "during start-up" in text
    assert str(missing) in text  # vLLM's own complaint, from the log tail
    assert not (lane_cache / "servers" / f"vllm-{port}.json").exists()
    assert port_free(port)


def test_readiness_timeout_stops_the_server(vllm_python: str, lane_cache: Path) -> None:
    port = free_port()
    rc, _out, err = serve(
        vllm_python, lane_cache, "--model", PACKAGED_MODEL, "--port", str(port), "--ready-timeout", "3"
    )
    assert rc == 1
    assert f"did not become ready (http://127.0.0.1:{port}/v1/models) within 3s" in " ".join(err.split())
    assert not (lane_cache / "servers" / f"vllm-{port}.json").exists()
    time.sleep(1)
    assert port_free(port)


def test_the_converted_model_verifies_and_a_damaged_copy_does_not(vllm_server: VllmServer, tmp_path: Path) -> None:
    folder = vllm_server.cache / "models" / "qwen2.5-coder-0.5b-instruct-bf16"
    assert verify_converted(folder) is None
    record = json.loads((folder / "kflow-convert.json").read_text())
    assert record["source_sha256"] == MODEL_SHA256 and record["dtype"] == "bfloat16"
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["eos_token_id"] == 151645
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [151645, 151643]
    assert not list(folder.parent.glob(".*.partial"))  # nothing half-written is left beside it
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in folder.iterdir():
        (copy / path.name).symlink_to(path)
    assert verify_converted(copy) is None
    (copy / "config.json").unlink()
    (copy / "config.json").write_text("{}")
    assert "config.json is missing or has another size" in (verify_converted(copy) or "")
    (copy / "kflow-convert.json").unlink()
    assert "kflow-convert.json is missing" in (verify_converted(copy) or "")
