"""End to end with the real embedded CPU model (llama.cpp + Qwen2.5-Coder-0.5B-Instruct)."""

from __future__ import annotations

import importlib.util
import json
import socket
from pathlib import Path

import pytest

from knowledge_flow.persistence import get_store
from tests.conftest import run_kflow, shared_dataset

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="needs the local extra")
def test_two_rollouts_on_a_gsm8k_problem(tmp_path: Path) -> None:
    from knowledge_flow.server_launch.local import start_local

    row = json.loads(shared_dataset("gsm8k_dev.jsonl").read_text().splitlines()[0])
    server = start_local(port=free_port(), write_pid_file=False)
    try:
        db = tmp_path / "e2e.db"
        proc = run_kflow(
            [
                "solve",
                row["problem"],
                "--base-url",
                server.base_url,
                "--iterations",
                "2",
                "--max-new-tokens",
                "384",
                "--thread-id",
                "e2e",
                "--db",
                str(db),
                "--json",
            ],
            timeout=600,
        )
    finally:
        server.stop()
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["status"] == "done"
    assert result["iterations_done"] == 2
    assert len(result["answers"]) == 2
    assert any(answer is not None for answer in result["answers"])
    store = get_store(db)
    run = store.latest_run("e2e")
    assert run is not None
    rollouts = store.rollouts(run.run_id)
    assert len(rollouts) == 2
    assert all(r.content.strip() and r.completion_tokens > 0 and r.prompt_tokens > 0 for r in rollouts)
    assert all(r.parsed for r in rollouts)
    assert "## Reference Solution" in rollouts[1].messages[0]["content"]
