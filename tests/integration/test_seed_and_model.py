"""Sampling seeds (what the server receives), which model answered (every summary says it), and the model a run
sends when none is named (the local server's, or the 1.5B packaged model when it is installed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from knowledge_flow.cli import common
from knowledge_flow.options import SEED_STRIDE
from knowledge_flow.server_launch import local
from knowledge_flow.server_launch.model_files import QWEN_05B, QWEN_15B
from tests.conftest import free_port, run_kflow, scripted_server
from tests.integration.scripts import PAPER_SET, PROBLEM, SCRIPT
from tests.support.scripted_server import ScriptedServer, script_responder


def solve(server: ScriptedServer, db: Path, *extra: str) -> dict[str, object]:
    proc = run_kflow(
        ["solve", PROBLEM, "--base-url", server.base_url, "--prompts", PAPER_SET, "--db", str(db), "--json", *extra]
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def test_each_rollout_is_sent_its_own_seed(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    server = scripted_server(scripted, {"default": SCRIPT})
    solve(server, tmp_path / "a.db", "--model", "m", "--iterations", "3", "--seed", "7")
    assert [r.body["seed"] for r in server.requests] == [7, 7 + SEED_STRIDE, 7 + 2 * SEED_STRIDE]
    unseeded = scripted_server(scripted, {"default": SCRIPT})
    solve(unseeded, tmp_path / "b.db", "--model", "m", "--iterations", "2")
    assert all("seed" not in r.body for r in unseeded.requests)  # no seed unless asked


def test_thinkers_get_consecutive_seeds_when_the_server_ignores_n(
    scripted: type[ScriptedServer], tmp_path: Path
) -> None:
    """llama.cpp returns one choice for n > 1: the other thinkers' requests go out one by one, each with the
    seed vLLM would have given that choice (seed + i)."""
    server = scripted(script_responder({"default": SCRIPT}), honour_n=False).start()
    solve(server, tmp_path / "t.db", "--model", "m", "--iterations", "2", "--thinkers", "3", "--seed", "100")
    sent = [(r.body.get("n"), r.body["seed"]) for r in server.requests]
    first, second = 100, 100 + SEED_STRIDE
    assert sent == [(3, first), (1, first + 1), (1, first + 2), (3, second), (1, second + 1), (1, second + 2)]


def test_summaries_say_which_model_answered(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    """The server reports `scripted-model`; a run that sends another name says both (llama.cpp's server, like
    this one, answers to any name)."""
    server = scripted_server(scripted, {"default": SCRIPT})
    db = tmp_path / "m.db"
    result = solve(server, db, "--model", "other-name", "--iterations", "2", "--thread-id", "m1")
    assert result["model"] == "scripted-model (requested as other-name)"
    text = run_kflow(["solve", PROBLEM, "--base-url", server.base_url, "--iterations", "1", "--db", str(db)])
    assert "model: scripted-model (requested as qwen2.5-coder-0.5b-instruct)" in text.stdout  # no --model: the default
    shown = run_kflow(["show", "m1", "--db", str(db)])
    assert "model scripted-model (requested as other-name)" in shown.stdout
    dataset = tmp_path / "one.jsonl"
    dataset.write_text(json.dumps({"id": "1", "problem": PROBLEM, "answer": "9"}) + "\n")
    evaluated = run_kflow(
        [
            *("eval", "--dataset", str(dataset), "--iterations", "2", "--base-url", server.base_url, "--model", "x"),
            *("--db", str(tmp_path / "e.db"), "--output-dir", str(tmp_path / "results"), "--eval-id", "e1"),
        ]
    )
    assert evaluated.returncode == 0, evaluated.stderr
    assert "model scripted-model (requested as x)" in " ".join(evaluated.stdout.split())


def test_a_model_named_or_a_remote_endpoint_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    assert common.run_model(common.DEFAULT_LOCAL_BASE_URL, "mine") == "mine"
    assert common.run_model("http://gpu-node:8000/v1", None) is None  # the run's default applies
    monkeypatch.setenv("KFLOW_MODEL", "from-env")
    assert common.run_model(common.DEFAULT_LOCAL_BASE_URL, None) is None  # KFLOW_MODEL applies


def test_without_a_model_the_local_server_s_model_is_sent(
    scripted: type[ScriptedServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = scripted_server(scripted, {"default": SCRIPT})
    monkeypatch.setattr(common, "DEFAULT_LOCAL_BASE_URL", server.base_url)
    assert common.run_model(server.base_url, None) == "scripted-model"


@pytest.mark.parametrize(("installed", "expected"), [(True, QWEN_15B), (False, QWEN_05B)])
def test_without_a_server_the_preferred_packaged_model_is_started(
    monkeypatch: pytest.MonkeyPatch, installed: bool, expected: object
) -> None:
    """Nothing listens on the local port: the run sends the packaged model `endpoint` then starts there, the
    1.5B one when its slices are installed."""
    nowhere = f"http://127.0.0.1:{free_port()}/v1"
    monkeypatch.setattr(common, "DEFAULT_LOCAL_BASE_URL", nowhere)
    monkeypatch.setattr(local, "installed", lambda model: installed and model is QWEN_15B)
    assert local.preferred_model() is expected
    assert common.run_model(nowhere, None) == expected.served_name  # type: ignore[attr-defined]
    started: list[str | None] = []

    class Started:
        def stop(self) -> None:
            started.append("stopped")

    def start_local(**kwargs: object) -> Started:
        started.append(str(kwargs["model"]))
        return Started()

    monkeypatch.setattr(local, "start_local", start_local)
    with common.endpoint(nowhere, expected.served_name) as url:  # type: ignore[attr-defined]
        assert url == nowhere
    assert started == [expected.name, "stopped"]  # type: ignore[attr-defined]
