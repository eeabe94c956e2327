"""LangGraph Studio's local API server (`langgraph dev`) loads the graph and runs a thread."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from knowledge_flow.options import OPTION_NAMES
from tests.conftest import REPO, kflow_env
from tests.integration.scripts import ANSWERS, EXPECTED_PROMPTS, PAPER_SET, PROBLEM, SCRIPT
from tests.support.scripted_server import ScriptedServer, script_responder

pytestmark = pytest.mark.studio


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_ok(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"langgraph dev exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"langgraph dev did not answer {url}:\n{log.read_text()[-4000:]}")


def test_langgraph_dev_runs_a_thread(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    from langgraph_sdk import get_sync_client

    cli = shutil.which("langgraph", path=str(Path(sys.executable).parent))
    assert cli, "langgraph-cli is a dev dependency"
    server = scripted(script_responder({"default": SCRIPT})).start()
    port = free_port()
    log = tmp_path / "langgraph-dev.log"
    env = kflow_env(
        {
            "KFLOW_BASE_URL": server.base_url,
            "KFLOW_MODEL": "scripted-model",
            "KFLOW_DB": str(tmp_path / "studio.db"),
            "LANGGRAPH_CLI_NO_ANALYTICS": "1",
            "LANGSMITH_TRACING": "false",
        }
    )
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [
                cli,
                "dev",
                "--no-browser",
                "--port",
                str(port),
                "--host",
                "127.0.0.1",
                "--config",
                str(REPO / "langgraph.json"),
                "--no-reload",
            ],
            cwd=REPO,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ok(f"{url}/ok", proc, log)
        client = get_sync_client(url=url)
        assistants = client.assistants.search(graph_id="knowledge_flow")
        assert assistants, "the graph is registered"
        # Studio's input form: the problem and every run option, with its description and default
        schemas = client.assistants.get_schemas(assistants[0]["assistant_id"])
        inputs = schemas["input_schema"]
        assert inputs is not None and inputs["required"] == ["problem"]
        assert set(inputs["properties"]) == {"problem", *OPTION_NAMES}
        iterations = inputs["properties"]["iterations"]  # its default depends on the strategy: said in the text
        assert iterations["default"] is None and "default: 64" in iterations["description"]
        temperature = inputs["properties"]["temperature"]
        assert temperature["default"] == 0.6 and "temperature" in temperature["description"]
        assert "params" not in inputs["properties"] and "candidates" not in inputs["properties"]  # internal
        select_rule = json.dumps(inputs["properties"]["select_rule"])
        assert all(f'"{rule}"' in select_rule for rule in ("vote", "conf-vote", "verifier", "manager"))
        drawn = client.assistants.get_graph(assistants[0]["assistant_id"])
        assert {"reflect", "verify", "manage"} <= {node["id"] for node in drawn["nodes"]}
        assert {"source": "manage", "target": "distill_knowledge"} in [
            {"source": edge["source"], "target": edge["target"]} for edge in drawn["edges"]
        ]
        assert schemas["output_schema"] is not None and "final_answer" in schemas["output_schema"]["properties"]
        thread = client.threads.create()
        nodes: list[str] = []
        updates: list[tuple[str, object]] = []
        for part in client.runs.stream(
            thread["thread_id"],
            "knowledge_flow",
            input={"problem": PROBLEM, "iterations": 3, "prompts": PAPER_SET},
            stream_mode="updates",
        ):
            if part.event == "updates" and isinstance(part.data, dict):
                nodes.extend(part.data)
                updates.extend(part.data.items())
            assert part.event != "error", part.data
        assert nodes == ["prepare"] + ["solve", "extract_answer", "distill_knowledge", "stop_check"] * 3
        # each step's update says what it did: rollout ids, answers, knowledge; no reset markers
        assert "__overwrite__" not in json.dumps(updates)
        solved = [data for node, data in updates if node == "solve"]
        assert all(isinstance(d, dict) and len(d["pending_rollouts"]) == 1 for d in solved)
        extracted = [data for node, data in updates if node == "extract_answer"]
        assert [d["candidates"][0]["answer"] for d in extracted] == ANSWERS[:3]  # type: ignore[index]
        distilled = [data for node, data in updates if node == "distill_knowledge"]
        assert [d["answers"] for d in distilled] == [[a] for a in ANSWERS[:3]]  # type: ignore[index]
        state = client.threads.get_state(thread["thread_id"])
        values = state["values"]
        assert isinstance(values, dict)
        assert values["answers"] == ANSWERS[:3]
        assert values["status"] == "done"
        assert [r.prompt for r in server.requests] == EXPECTED_PROMPTS[:3]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=30)
