"""`--extra-body` past its bounds (or setting a field the run sets) is bad input: one line, exit 2, nothing
written, no request sent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_kflow
from tests.support.scripted_server import Reply, ScriptedServer, kf_output

BAD = {
    "deep": '{"a": ' + "[" * 20_000 + "]" * 20_000 + "}",
    "nan": '{"temperature_scale": NaN}',
    "infinity": '{"a": [Infinity]}',
    "large": json.dumps({"a": "x" * (70 << 10)}),
    "stream-options": '{"stream_options": {"include_usage": false}}',
}


@pytest.mark.parametrize("name", list(BAD))
def test_extra_body_past_its_bounds_is_refused(scripted: type[ScriptedServer], tmp_path: Path, name: str) -> None:
    server = scripted(lambda _request: Reply(content=kf_output("7", "s."))).start()
    db = tmp_path / "x.db"
    dataset = tmp_path / "set.jsonl"
    dataset.write_text(json.dumps({"id": "1", "problem": "What is 3 + 4?", "answer": "7"}))
    for args in (
        ["solve", "What is 3 + 4?"],
        ["eval", "--dataset", str(dataset), "--output-dir", str(tmp_path / "out")],
    ):
        proc = run_kflow([*args, "--base-url", server.base_url, "--db", str(db), "--extra-body", BAD[name]])
        assert proc.returncode == 2, (name, proc.stderr[-2000:])
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: extra_body"), (name, lines[:3])
        assert "Traceback" not in proc.stderr
    assert not db.exists() and not (tmp_path / "out").exists()
    assert not server.requests
