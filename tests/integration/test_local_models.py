"""`kflow serve local` with several packaged models and any GGUF file: names, usage errors, the served name."""

from __future__ import annotations

import importlib.util
import json
import socket
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import run_kflow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "qwen2.5-coder-7b"], "unknown packaged model 'qwen2.5-coder-7b'"),
        (["--model", "qwen2.5-coder-1.5b", "--model-path", "x.gguf"], "either --model"),
    ],
)
def test_serve_local_usage_errors(args: list[str], message: str, tmp_path: Path) -> None:
    proc = run_kflow(["serve", "local", *args, "--port", str(free_port())], env={"KFLOW_CACHE": str(tmp_path)})
    assert proc.returncode == 2, proc.stderr
    assert message in " ".join(proc.stderr.split())


def test_missing_gguf_file_is_reported(tmp_path: Path) -> None:
    proc = run_kflow(
        ["serve", "local", "--model-path", str(tmp_path / "absent.gguf"), "--port", str(free_port())],
        env={"KFLOW_CACHE": str(tmp_path)},
    )
    assert proc.returncode != 0
    assert "does not exist" in " ".join(proc.stderr.split())


@pytest.mark.e2e
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="needs the local extra")
def test_a_gguf_file_is_served_under_its_own_name(tmp_path: Path) -> None:
    from knowledge_flow.server_launch.model_files import ensure_model

    packaged = ensure_model()  # the 0.5B model, from the usual cache
    link = tmp_path / "my-model.gguf"
    link.symlink_to(packaged)
    port = free_port()
    env = {"KFLOW_CACHE": str(tmp_path / "cache")}
    proc = run_kflow(["serve", "local", "--model-path", str(link), "--port", str(port)], env=env, timeout=300)
    try:
        assert proc.returncode == 0, proc.stderr
        # its GGUF metadata names it "Qwen2.5 Coder 0.5B Instruct AWQ", not the packaged model's alias
        assert "local model server for qwen2.5-coder-0.5b-instruct-awq running" in proc.stdout
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=10) as response:
            served = [entry["id"] for entry in json.loads(response.read())["data"]]
        assert served == ["qwen2.5-coder-0.5b-instruct-awq"]
        record = json.loads((tmp_path / "cache" / "servers" / f"local-{port}.json").read_text())
        assert record["model"] == "qwen2.5-coder-0.5b-instruct-awq"
    finally:
        stopped = run_kflow(["serve", "stop", "--port", str(port)], env=env)
    assert "stopped" in stopped.stdout
